/*-------------------------------------------------------------------------
 *
 * csv_parse.c
 *	  A streaming RFC 4180 reader for the CSV inbox.
 *
 * The file is read through a fixed buffer, so a file of any size needs
 * the same memory; a record is parsed in place and handed out with its
 * values unescaped, the line it starts on (embedded line breaks count) and
 * its raw bytes, which is what a dead letter keeps.
 *
 * What is accepted: LF or CRLF line ends (a lone CR is data), a UTF-8 byte
 * order mark at the start of the file, quoted fields with doubled quotes
 * and line breaks inside, a last line without a line end.  Blank lines are
 * skipped.  An unquoted empty field is reported as NULL (as COPY ... CSV
 * does) and a quoted one as an empty string.
 *
 * What makes a record malformed (reported in CsvRecord.error, the record
 * still ends where RFC 4180 says so that reading goes on with the next
 * one): a quote inside an unquoted field, anything but a separator after a
 * closing quote, a quoted field still open at the end of the file.  A
 * record longer than CSV_MAX_RECORD_BYTES (which in practice means a quote
 * that was never closed) is refused from its first line, and reading
 * resumes on the line after: memory stays bounded.
 *
 * The reader checks no encoding: the worker validates the whole file as
 * UTF-8 before it reads any record.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include <unistd.h>

#include "miscadmin.h"
#include "sources/csv_parse.h"

/* The buffer holds two maximal records, so a refill always has room. */
#define CSV_BUFFER_BYTES	(2 * CSV_MAX_RECORD_BYTES)

struct CsvReader
{
	int			fd;
	const char *filename;		/* for I/O errors */
	char	   *buf;
	size_t		pos;			/* start of the next record */
	size_t		end;			/* bytes of buf that hold data */
	bool		eof;
	bool		at_start;		/* byte order mark not looked for yet */
	bool		skipping;		/* skipping to the end of an oversized line */
	int64		line;			/* line number at pos */
	int64		bytes_read;

	/* the current record's values, each NUL-terminated */
	StringInfoData values;
	int			maxfields;
	int		   *offsets;
	int		   *lengths;
	bool	   *quoted;
	char	  **fields;
};

typedef enum
{
	SCAN_RECORD,				/* a record is complete */
	SCAN_BLANK,					/* an empty line, skipped */
	SCAN_NEED_MORE				/* the buffer ends inside the record */
} CsvScanResult;

/* bytes that end an unquoted run */
static bool csv_special[256];

CsvReader *
csv_reader_create(int fd, const char *filename)
{
	CsvReader  *r = palloc0(sizeof(CsvReader));

	csv_special[(unsigned char) ','] = true;
	csv_special[(unsigned char) '\n'] = true;
	csv_special[(unsigned char) '\r'] = true;
	csv_special[(unsigned char) '"'] = true;

	r->fd = fd;
	r->filename = pstrdup(filename);
	r->buf = palloc(CSV_BUFFER_BYTES);
	r->at_start = true;
	r->line = 1;
	initStringInfo(&r->values);
	r->maxfields = 32;
	r->offsets = palloc(sizeof(int) * r->maxfields);
	r->lengths = palloc(sizeof(int) * r->maxfields);
	r->quoted = palloc(sizeof(bool) * r->maxfields);
	r->fields = palloc(sizeof(char *) * r->maxfields);
	return r;
}

void
csv_reader_free(CsvReader *r)
{
	pfree(r->buf);
	pfree(r->values.data);
	pfree(r->offsets);
	pfree(r->lengths);
	pfree(r->quoted);
	pfree(r->fields);
	pfree(r);
}

int64
csv_bytes_read(CsvReader *r)
{
	return r->bytes_read;
}

/*
 * Move what is left to the front of the buffer and read more.  Returns
 * false at the end of the file.
 */
static bool
csv_refill(CsvReader *r)
{
	ssize_t		n;

	if (r->eof)
		return false;
	if (r->pos > 0)
	{
		memmove(r->buf, r->buf + r->pos, r->end - r->pos);
		r->end -= r->pos;
		r->pos = 0;
	}
	Assert(r->end < CSV_BUFFER_BYTES);
	do
	{
		n = read(r->fd, r->buf + r->end, CSV_BUFFER_BYTES - r->end);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", r->filename)));
	CHECK_FOR_INTERRUPTS();
	if (n == 0)
	{
		r->eof = true;
		return false;
	}
	r->end += n;
	r->bytes_read += n;
	return true;
}

/*
 * Copy bytes of the current field.  csv_scan first reserves room for the
 * rest of the buffer plus two: from n bytes a record's values take at most
 * n + 1 (each field's NUL stands for a byte not copied, its delimiter or
 * opening quote, except for a last field at the end of the file), so
 * copies need no checks.  (The values buffer thus grows to the read
 * buffer's size, 4 MB, for files that large.)
 */
static inline void
csv_put_value(CsvReader *r, const char *s, size_t len)
{
	Assert(r->values.len + len < (size_t) r->values.maxlen);
	memcpy(r->values.data + r->values.len, s, len);
	r->values.len += len;
}

static void
csv_add_field(CsvReader *r, int nfields, int offset, bool quoted)
{
	if (nfields >= r->maxfields)
	{
		r->maxfields *= 2;
		r->offsets = repalloc(r->offsets, sizeof(int) * r->maxfields);
		r->lengths = repalloc(r->lengths, sizeof(int) * r->maxfields);
		r->quoted = repalloc(r->quoted, sizeof(bool) * r->maxfields);
		r->fields = repalloc(r->fields, sizeof(char *) * r->maxfields);
	}
	r->offsets[nfields] = offset;
	r->lengths[nfields] = r->values.len - offset;
	r->quoted[nfields] = quoted;
	Assert(r->values.len + 1 < r->values.maxlen);
	r->values.data[r->values.len++] = '\0';
}

static int64
count_newlines(const char *p, size_t len)
{
	int64		n = 0;
	const char *end = p + len;

	while ((p = memchr(p, '\n', end - p)) != NULL)
	{
		n++;
		p++;
	}
	return n;
}

/*
 * Parse the record that starts at r->pos.  On SCAN_NEED_MORE nothing is
 * consumed: the caller reads more and the record is parsed again from its
 * start (once per buffer refill at most).
 */
static CsvScanResult
csv_scan(CsvReader *r, CsvRecord *rec)
{
	const char *buf = r->buf;
	size_t		end = r->end;
	size_t		p = r->pos;
	int64		newlines = 0;
	int			nfields = 0;
	const char *error = NULL;
	size_t		rawend;
	size_t		next;

	resetStringInfo(&r->values);
	enlargeStringInfo(&r->values, end - p + 2);

	for (;;)
	{
		int			offset = r->values.len;
		bool		quoted = false;
		bool		after_quote = false;
		size_t		run;

		if (p < end && buf[p] == '"')
		{
			quoted = true;
			p++;
			for (;;)
			{
				const char *q = memchr(buf + p, '"', end - p);
				size_t		stop = q ? (size_t) (q - buf) : end;

				newlines += count_newlines(buf + p, stop - p);
				csv_put_value(r, buf + p, stop - p);
				p = stop;
				if (q == NULL)
				{
					if (!r->eof)
						return SCAN_NEED_MORE;
					/* the file ends inside the quotes */
					if (error == NULL)
						error = "unterminated quoted field at the end of the file";
					csv_add_field(r, nfields++, offset, quoted);
					rawend = next = end;
					goto record_end;
				}
				if (p + 1 >= end && !r->eof)
					return SCAN_NEED_MORE;
				if (p + 1 < end && buf[p + 1] == '"')
				{
					csv_put_value(r, "\"", 1);
					p += 2;
					continue;
				}
				p++;			/* the closing quote */
				after_quote = true;
				break;
			}
		}

		/* unquoted text, or what follows a closing quote */
		run = p;
		for (;;)
		{
			unsigned char c;

			while (p < end && !csv_special[(unsigned char) buf[p]])
				p++;
			if (after_quote && p > run && error == NULL)
				error = "unexpected character after a closing quote";
			if (p >= end)
			{
				if (!r->eof)
					return SCAN_NEED_MORE;
				csv_put_value(r, buf + run, p - run);
				csv_add_field(r, nfields++, offset, quoted);
				rawend = next = end;
				goto record_end;
			}
			c = (unsigned char) buf[p];
			if (c == '"')
			{
				/* RFC 4180 forbids it; keep it as data to find the record's end */
				if (error == NULL)
					error = quoted ? "unexpected character after a closing quote" :
						"quote inside an unquoted field";
				after_quote = false;
				p++;
				continue;
			}
			if (c == '\r')
			{
				if (p + 1 >= end && !r->eof)
					return SCAN_NEED_MORE;
				if (p + 1 < end && buf[p + 1] != '\n')
				{
					/* a lone CR is data */
					if (after_quote && error == NULL)
						error = "unexpected character after a closing quote";
					after_quote = false;
					p++;
					continue;
				}
				/* CRLF, or a CR that ends the file */
				csv_put_value(r, buf + run, p - run);
				csv_add_field(r, nfields++, offset, quoted);
				rawend = p;
				next = (p + 1 < end) ? p + 2 : p + 1;
				newlines++;
				goto record_end;
			}
			csv_put_value(r, buf + run, p - run);
			csv_add_field(r, nfields++, offset, quoted);
			if (c == ',')
			{
				p++;
				break;			/* next field */
			}
			/* LF */
			rawend = p;
			next = p + 1;
			newlines++;
			goto record_end;
		}
	}

record_end:
	rec->line = r->line;
	rec->raw = buf + r->pos;
	rec->rawlen = rawend - r->pos;
	rec->error = error;
	rec->nfields = nfields;
	r->line += newlines;
	r->pos = next;

	if (nfields == 1 && !r->quoted[0] && rec->rawlen == 0)
		return SCAN_BLANK;

	for (int i = 0; i < nfields; i++)
		r->fields[i] = r->values.data + r->offsets[i];
	rec->fields = r->fields;
	rec->lengths = r->lengths;
	rec->quoted = r->quoted;
	return SCAN_RECORD;
}

/*
 * Skip to the character after the next LF (the end of an oversized
 * record's first line).  Returns false if the file ends first.
 */
static bool
csv_skip_line(CsvReader *r)
{
	for (;;)
	{
		const char *nl = memchr(r->buf + r->pos, '\n', r->end - r->pos);

		if (nl != NULL)
		{
			r->pos = nl - r->buf + 1;
			r->line++;
			r->skipping = false;
			return true;
		}
		r->pos = r->end;
		if (!csv_refill(r))
		{
			r->skipping = false;
			return false;
		}
	}
}

/*
 * A record longer than CSV_MAX_RECORD_BYTES, from r->pos: its first line is
 * refused (an unclosed quote, most likely), and reading resumes after it.
 */
static void
refuse_long_record(CsvReader *r, CsvRecord *rec)
{
	const char *start = r->buf + r->pos;
	const char *nl = memchr(start, '\n', r->end - r->pos);
	size_t		len = nl ? (size_t) (nl - start) : r->end - r->pos;

	if (len > 0 && start[len - 1] == '\r')
		len--;
	rec->line = r->line;
	rec->raw = start;
	rec->rawlen = len;
	rec->nfields = 0;
	rec->fields = r->fields;
	rec->lengths = r->lengths;
	rec->quoted = r->quoted;
	rec->error = "record longer than 1 MB (an unclosed quote?): its first line is refused and reading resumes on the next line";

	/* the raw bytes must survive the skip: skip only on the next call */
	r->skipping = true;
}

/*
 * The next record of the file; false at its end.  The record's pointers
 * stay valid until the next call.
 */
bool
csv_read_record(CsvReader *r, CsvRecord *rec)
{
	for (;;)
	{
		CsvScanResult result;
		size_t		start;
		int64		line;

		if (r->skipping && !csv_skip_line(r))
			return false;

		if (r->at_start)
		{
			while (r->end - r->pos < 3 && csv_refill(r))
				;
			if (r->end - r->pos >= 3 && memcmp(r->buf + r->pos, "\xEF\xBB\xBF", 3) == 0)
				r->pos += 3;
			r->at_start = false;
		}

		if (r->pos == r->end && !csv_refill(r))
			return false;

		start = r->pos;
		line = r->line;
		result = csv_scan(r, rec);
		if (result == SCAN_RECORD)
		{
			if (r->pos - start <= CSV_MAX_RECORD_BYTES)
				return true;

			/*
			 * Complete in the buffer but over the limit: refused as one
			 * that runs past the buffer is, so that whether a record of 1
			 * to 2 MB is read does not depend on where it starts.
			 */
			r->pos = start;
			r->line = line;
			refuse_long_record(r, rec);
			return true;
		}
		if (result == SCAN_BLANK)
			continue;

		/* the record goes on past the buffer */
		if (r->end - r->pos >= CSV_MAX_RECORD_BYTES)
		{
			refuse_long_record(r, rec);
			return true;
		}
		(void) csv_refill(r);
	}
}
