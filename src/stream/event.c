/*-------------------------------------------------------------------------
 *
 * event.c
 *	  Reading change envelopes and window results off Kafka: a validating
 *	  JSON scanner, exact decimals and ISO-8601 times.
 *
 * The stream worker reads hundreds of thousands of messages per second and
 * needs a handful of fields from each, so instead of building a JSON tree
 * this scanner validates a message in one pass and hands out spans (start
 * and length) of the members asked for.  Malformed JSON is found on that
 * pass and the message goes to the dead letters.
 *
 * Numbers are kept exact: amounts are read as decimal mantissa and scale
 * (never as floating point), and summed as 128-bit integers.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include <ctype.h>
#include <errno.h>
#include <limits.h>

#include "common/int.h"
#include "datatype/timestamp.h"
#include "stream/event.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

/* ---------------------------------------------------------------------
 * Scanning
 * ---------------------------------------------------------------------
 */
static pg_attribute_always_inline const char *
skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* What ends a run of plain characters in a JSON string. */
static const bool json_string_stop[256] = {
	[0x00 ... 0x1f] = true,
	['"'] = true,
	['\\'] = true,
};

/*
 * p at the opening quote; returns the position after the closing one.
 * Inlined: called for every key and string value of every event.
 */
static pg_attribute_always_inline const char *
skip_string(const char *p, const char *end)
{
	p++;
	for (;;)
	{
		unsigned char c;

		/* most of a string is plain characters: skip them 16 at a time */
#ifdef __SSE2__
		while (end - p >= 16)
		{
			__m128i		v = _mm_loadu_si128((const __m128i *) p);
			__m128i		stop = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')),
														 _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
											/* 0x00 to 0x1f: no bit of 0xe0 set */
											_mm_cmpeq_epi8(_mm_and_si128(v, _mm_set1_epi8((char) 0xe0)),
														   _mm_setzero_si128()));
			int			mask = _mm_movemask_epi8(stop);

			if (mask != 0)
			{
				p += __builtin_ctz(mask);
				break;
			}
			p += 16;
		}
#endif
		while (p < end && !json_string_stop[(unsigned char) *p])
			p++;
		if (p >= end)
			return NULL;
		c = (unsigned char) *p;
		if (c == '"')
			return p + 1;
		if (c == '\\')
		{
			if (p + 1 >= end)
				return NULL;
			switch (p[1])
			{
				case '"':
				case '\\':
				case '/':
				case 'b':
				case 'f':
				case 'n':
				case 'r':
				case 't':
					p += 2;
					break;
				case 'u':
					if (p + 6 > end)
						return NULL;
					for (int i = 2; i < 6; i++)
						if (!isxdigit((unsigned char) p[i]))
							return NULL;
					p += 6;
					break;
				default:
					return NULL;
			}
			continue;
		}
		return NULL;			/* a control character */
	}
}

/*
 * Are n bytes at a and b the same?  For member names, a few bytes long:
 * a call to memcmp costs more than comparing them here.
 */
static pg_attribute_always_inline bool
name_equal(const char *a, const char *b, int n)
{
	for (int i = 0; i < n; i++)
		if (a[i] != b[i])
			return false;
	return true;
}

static const char *
skip_number(const char *p, const char *end)
{
	const char *start;

	if (p < end && *p == '-')
		p++;
	if (p >= end)
		return NULL;
	if (*p == '0')
		p++;
	else if (*p >= '1' && *p <= '9')
		while (p < end && isdigit((unsigned char) *p))
			p++;
	else
		return NULL;
	if (p < end && *p == '.')
	{
		start = ++p;
		while (p < end && isdigit((unsigned char) *p))
			p++;
		if (p == start)
			return NULL;
	}
	if (p < end && (*p == 'e' || *p == 'E'))
	{
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		start = p;
		while (p < end && isdigit((unsigned char) *p))
			p++;
		if (p == start)
			return NULL;
	}
	return p;
}

/*
 * An object's member, p at its key: sets the key (without its quotes) and
 * returns where the value starts, NULL if this is not "key":.
 */
static pg_attribute_always_inline const char *
member_key(const char *p, const char *end, const char **key, int *keylen)
{
	const char *keyend;

	if (p >= end || *p != '"')
		return NULL;
	keyend = skip_string(p, end);
	if (keyend == NULL)
		return NULL;
	*key = p + 1;
	*keylen = (int) (keyend - p - 2);
	p = skip_ws(keyend, end);
	if (p >= end || *p != ':')
		return NULL;
	return skip_ws(p + 1, end);
}

/*
 * After a member's value: returns where the next member starts, or, with
 * *closed set, the position after the object's '}'; NULL if neither.
 */
static pg_attribute_always_inline const char *
member_next(const char *p, const char *end, bool *closed)
{
	p = skip_ws(p, end);
	*closed = false;
	if (p >= end)
		return NULL;
	if (*p == '}')
	{
		*closed = true;
		return p + 1;
	}
	if (*p != ',')
		return NULL;
	return skip_ws(p + 1, end);
}

static const char *skip_value(const char *p, const char *end, int depth);

static const char *
skip_container(const char *p, const char *end, int depth, bool object)
{
	char		close = object ? '}' : ']';
	bool		first = true;

	if (depth > 64)
		return NULL;
	p = skip_ws(p + 1, end);
	if (p < end && *p == close)
		return p + 1;
	for (;;)
	{
		if (!first)
		{
			p = skip_ws(p, end);
			if (p >= end)
				return NULL;
			if (*p == close)
				return p + 1;
			if (*p != ',')
				return NULL;
			p = skip_ws(p + 1, end);
		}
		first = false;
		if (object)
		{
			const char *key;
			int			keylen;

			p = member_key(p, end, &key, &keylen);
			if (p == NULL)
				return NULL;
		}
		p = skip_value(p, end, depth + 1);
		if (p == NULL)
			return NULL;
	}
}

static const char *
skip_value(const char *p, const char *end, int depth)
{
	p = skip_ws(p, end);
	if (p >= end)
		return NULL;
	switch (*p)
	{
		case '"':
			return skip_string(p, end);
		case '{':
			return skip_container(p, end, depth, true);
		case '[':
			return skip_container(p, end, depth, false);
		case 't':
			return (end - p >= 4 && memcmp(p, "true", 4) == 0) ? p + 4 : NULL;
		case 'f':
			return (end - p >= 5 && memcmp(p, "false", 5) == 0) ? p + 5 : NULL;
		case 'n':
			return (end - p >= 4 && memcmp(p, "null", 4) == 0) ? p + 4 : NULL;
		default:
			return skip_number(p, end);
	}
}

static JsonSpan
make_span(const char *p, const char *after)
{
	JsonSpan	s;

	s.p = p;
	s.len = after - p;
	switch (*p)
	{
		case '"':
			s.type = JSON_SPAN_STRING;
			break;
		case '{':
			s.type = JSON_SPAN_OBJECT;
			break;
		case '[':
			s.type = JSON_SPAN_ARRAY;
			break;
		case 'n':
			s.type = JSON_SPAN_NULL;
			break;
		case 't':
		case 'f':
			s.type = JSON_SPAN_BOOL;
			break;
		default:
			s.type = JSON_SPAN_NUMBER;
			break;
	}
	return s;
}

/*
 * Is [p, p+len) plain ASCII without NUL bytes?  Such bytes are valid in
 * every server encoding, and most messages are nothing else: they need no
 * pg_verifymbstr, which costs several times this.
 */
bool
bytes_are_plain_ascii(const char *p, size_t len)
{
	const char *end = p + len;

#ifdef __SSE2__
	__m128i		bad = _mm_setzero_si128();

	for (; end - p >= 16; p += 16)
	{
		__m128i		v = _mm_loadu_si128((const __m128i *) p);

		/* a high bit (non-ASCII) or a zero byte */
		bad = _mm_or_si128(bad, _mm_or_si128(v, _mm_cmpeq_epi8(v, _mm_setzero_si128())));
	}
	if (_mm_movemask_epi8(bad) != 0)
		return false;
#endif
	for (; p < end; p++)
		if (*p == '\0' || (unsigned char) *p >= 0x80)
			return false;
	return true;
}

/* Is [p, p+len) exactly one valid JSON value, an object? */
bool
json_is_object(const char *p, int len)
{
	const char *end = p + len;
	const char *start = skip_ws(p, end);
	const char *after;

	if (start >= end || *start != '{')
		return false;
	after = skip_value(start, end, 0);
	return after != NULL && skip_ws(after, end) == end;
}

static const char *row_scan(const char *row, const char *end);

/* Members to find in an object, as json_object_members takes them. */
typedef struct MemberRequest
{
	int			n;
	const char *const *names;
	const int  *namelens;
	JsonSpan   *found;
} MemberRequest;

/*
 * Validate the object at p (its '{'), depth levels down, and find the
 * members req names (the first of duplicates wins).  Returns the position
 * after the object, NULL if it is not valid JSON.  The value of the member
 * names[row_member] (unless -1), if an object, is read into the row cache
 * on the way (see json_row_members); that of names[sub_member], if an
 * object, has the members sub names found in it.
 */
static const char *
object_scan(const char *p, const char *end, int depth, const MemberRequest *req,
			int row_member, int sub_member, const MemberRequest *sub)
{
	for (int i = 0; i < req->n; i++)
		req->found[i].type = JSON_SPAN_MISSING;
	if (depth > 64)
		return NULL;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return p + 1;
	for (;;)
	{
		const char *key;
		const char *value;
		const char *after;
		int			keylen;
		int			match = -1;
		bool		closed;

		value = member_key(p, end, &key, &keylen);
		if (value == NULL)
			return NULL;
		for (int i = 0; i < req->n; i++)
		{
			if (req->found[i].type == JSON_SPAN_MISSING && req->namelens[i] == keylen &&
				name_equal(req->names[i], key, keylen))
			{
				match = i;
				break;
			}
		}
		if (match >= 0 && match == row_member && value < end && *value == '{')
			after = row_scan(value, end);
		else if (match >= 0 && match == sub_member && value < end && *value == '{')
			after = object_scan(value, end, depth + 1, sub, -1, -1, NULL);
		else
			after = skip_value(value, end, depth + 1);
		if (after == NULL)
			return NULL;
		if (match >= 0)
			req->found[match] = make_span(value, after);
		p = member_next(after, end, &closed);
		if (p == NULL || closed)
			return p;
	}
}

/*
 * Find the members named in names[] (n of them) in the object spanning
 * [obj, obj+len), which must be valid JSON.  found[i] gets the value's span
 * (type JSON_SPAN_MISSING when absent).  Keys with escapes never match.
 */
void
json_object_members(const char *obj, int len, int n, const char *const *names,
					const int *namelens, JsonSpan *found)
{
	MemberRequest req = {n, names, namelens, found};

	(void) object_scan(obj, obj + len, 0, &req, -1, -1, NULL);
}

/*
 * The members of the row looked up last, so that a change's row, looked up
 * once per ranking and once more for stream time, is read once.  The row
 * is known by its address: json_row_forget() must be called before memory
 * that held a row may hold another (at every batch's start).
 */
#define ROW_MEMBERS_MAX 64

typedef struct RowMember
{
	const char *name;
	int			namelen;
	JsonSpan	value;
} RowMember;

static const char *row_cached = NULL;
static int	row_cached_len = 0;
static int	row_nmembers = 0;
static RowMember row_members[ROW_MEMBERS_MAX];
static bool row_names_may_repeat;	/* could two members share a name? */

/* the last time and decimal read from the cached row, by span address */
static const char *row_time_at = NULL;
static TimestampTz row_time;
static bool row_time_ok;
static const char *row_decimal_at = NULL;
static KappaDecimal row_decimal;
static bool row_decimal_ok;

void
json_row_forget(void)
{
	row_cached = NULL;
	row_time_at = NULL;
	row_decimal_at = NULL;
}

/* timestamp_parse of a span of the cached row: every ranking reads it */
bool
json_row_timestamp(const JsonSpan *s, TimestampTz *t)
{
	if (s->type == JSON_SPAN_MISSING || row_cached == NULL)
		return timestamp_parse(s, t);
	if (s->p != row_time_at)
	{
		row_time_ok = timestamp_parse(s, &row_time);
		row_time_at = s->p;
	}
	*t = row_time;
	return row_time_ok;
}

/* decimal_parse of a span of the cached row */
bool
json_row_decimal(const JsonSpan *s, KappaDecimal *d)
{
	if (s->type == JSON_SPAN_MISSING || row_cached == NULL)
		return decimal_parse(s, d);
	if (s->p != row_decimal_at)
	{
		row_decimal_ok = decimal_parse(s, &row_decimal);
		row_decimal_at = s->p;
	}
	*d = row_decimal;
	return row_decimal_ok;
}

/*
 * Where each name of a names array was found in the last row, for a few
 * arrays (one per ranking): a row is then read in one comparison per name.
 * Keyed by the array's address, which outlives a batch (rankings are
 * reloaded between batches, see json_row_forget).
 */
#define MEMBER_HINT_SETS 8
#define MEMBER_HINT_NAMES 16

static const char *const *hint_names[MEMBER_HINT_SETS];
static int	hint_index[MEMBER_HINT_SETS][MEMBER_HINT_NAMES];
static int	hint_next = 0;

static int *
member_hints(const char *const *names, int n)
{
	int			k;

	if (n > MEMBER_HINT_NAMES)
		return NULL;
	for (k = 0; k < MEMBER_HINT_SETS; k++)
		if (hint_names[k] == names)
			return hint_index[k];
	k = hint_next;
	hint_next = (hint_next + 1) % MEMBER_HINT_SETS;
	hint_names[k] = names;
	for (int i = 0; i < MEMBER_HINT_NAMES; i++)
		hint_index[k][i] = -1;
	return hint_index[k];
}

/* Does a member before h carry this name?  (The first of duplicates wins.) */
static bool
member_named_before(int h, const char *name, int namelen)
{
	for (int m = 0; m < h; m++)
		if (row_members[m].namelen == namelen &&
			name_equal(row_members[m].name, name, namelen))
			return true;
	return false;
}

/*
 * Read the object at row (its '{') into the row cache, validating it as
 * skip_value would: one entry per member, in order.  Returns the position
 * after the object, NULL if it is not valid JSON.  A row of more than
 * ROW_MEMBERS_MAX members is validated but not cached.
 */
static const char *
row_scan(const char *row, const char *end)
{
	const char *p;
	uint64		seen[4] = {0, 0, 0, 0};
	bool		wide = false;

	json_row_forget();
	row_nmembers = 0;
	row_names_may_repeat = false;
	p = skip_ws(row + 1, end);
	if (p < end && *p == '}')
		p++;
	else
	{
		for (;;)
		{
			const char *key;
			const char *value;
			const char *after;
			int			nl;
			bool		closed;

			value = member_key(p, end, &key, &nl);
			if (value == NULL)
				return NULL;
			/* (members of an envelope's row are two levels down) */
			after = skip_value(value, end, 2);
			if (after == NULL)
				return NULL;
			if (row_nmembers == ROW_MEMBERS_MAX)
				wide = true;
			else
			{
				/* names alike in length and ends share a bit */
				unsigned	b = (unsigned) (nl * 31 + (nl > 0 ? (unsigned char) key[0] * 7 + (unsigned char) key[nl - 1] : 0)) & 255;

				row_members[row_nmembers].name = key;
				row_members[row_nmembers].namelen = nl;
				row_members[row_nmembers].value = make_span(value, after);
				if (seen[b >> 6] & (UINT64CONST(1) << (b & 63)))
					row_names_may_repeat = true;
				seen[b >> 6] |= UINT64CONST(1) << (b & 63);
				row_nmembers++;
			}
			p = member_next(after, end, &closed);
			if (p == NULL)
				return NULL;
			if (closed)
				break;
		}
	}
	if (!wide)
	{
		row_cached = row;
		row_cached_len = (int) (p - row);
	}
	return p;
}

/* json_object_members for a row (a valid object), through the cache */
void
json_row_members(const char *row, int len, int n, const char *const *names,
				 const int *namelens, JsonSpan *found)
{
	int		   *hints;

	if (row != row_cached || len != row_cached_len)
	{
		(void) row_scan(row, row + len);
		if (row != row_cached || len != row_cached_len)
		{
			/* a wide row: not cached */
			json_object_members(row, len, n, names, namelens, found);
			return;
		}
	}
	hints = member_hints(names, n);
	for (int i = 0; i < n; i++)
	{
		int			h = hints ? hints[i] : -1;

		/* where it was in the last row: rows of a topic share their layout */
		if (h >= 0 && h < row_nmembers && row_members[h].namelen == namelens[i] &&
			name_equal(row_members[h].name, names[i], namelens[i]) &&
			(!row_names_may_repeat || !member_named_before(h, names[i], namelens[i])))
		{
			found[i] = row_members[h].value;
			continue;
		}
		found[i].type = JSON_SPAN_MISSING;
		/* the first of duplicate names, as json_object_members */
		for (int m = 0; m < row_nmembers; m++)
		{
			if (row_members[m].namelen == namelens[i] &&
				name_equal(row_members[m].name, names[i], namelens[i]))
			{
				found[i] = row_members[m].value;
				if (hints)
					hints[i] = m;
				break;
			}
		}
	}
}

/* Is s Debezium's marker for an unchanged TOASTed value (a JSON string)? */
bool
json_span_is_unavailable(const JsonSpan *s)
{
	return s->type == JSON_SPAN_STRING &&
		s->len == (int) sizeof(KAPPA_UNCHANGED_TOAST_MARKER) + 1 &&
		memcmp(s->p + 1, KAPPA_UNCHANGED_TOAST_MARKER,
			   sizeof(KAPPA_UNCHANGED_TOAST_MARKER) - 1) == 0;
}

/*
 * row (a valid JSON object: a change's "after") with every member that is
 * the unavailable-value marker replaced by the member of the same name in
 * from (a valid object: an earlier version of the same row), where from has
 * a value for it that is neither null nor the marker.  (A "before" that holds
 * the key columns only has nulls for the others.)  A change leaves out a TOASTed
 * value it did not change; the earlier version has it.
 *
 * Returns NULL when row has no marker (one memmem for almost every row) or
 * nothing could be filled in; otherwise a palloc'd object and its length.
 * The row cache is cleared, the new row being at an address a freed row
 * may have had.
 */
char *
json_row_fill_unavailable(const char *row, int len, const char *from, int fromlen,
						  int *newlen)
{
	static const char marker[] = "\"" KAPPA_UNCHANGED_TOAST_MARKER "\"";
	const char *end = row + len;
	const char *p;
	const char *copied;
	StringInfoData out;

	if (len < (int) sizeof(marker) - 1 ||
		memmem(row, len, marker, sizeof(marker) - 1) == NULL)
		return NULL;

	out.data = NULL;
	copied = row;
	p = skip_ws(row + 1, end);
	if (p >= end || *p == '}')
		return NULL;
	for (;;)
	{
		const char *key;
		const char *value;
		const char *after;
		int			keylen;
		bool		closed;
		JsonSpan	mine;

		value = member_key(p, end, &key, &keylen);
		if (value == NULL)
			return NULL;		/* (not valid JSON: left to the caller) */
		after = skip_value(value, end, 1);
		if (after == NULL)
			return NULL;
		mine = make_span(value, after);
		if (json_span_is_unavailable(&mine))
		{
			JsonSpan	theirs;

			json_object_members(from, fromlen, 1, &key, &keylen, &theirs);
			/* (a null is no value: a marker always stands for one) */
			if (theirs.type != JSON_SPAN_MISSING && theirs.type != JSON_SPAN_NULL &&
				!json_span_is_unavailable(&theirs))
			{
				if (out.data == NULL)
					initStringInfo(&out);
				appendBinaryStringInfo(&out, copied, value - copied);
				appendBinaryStringInfo(&out, theirs.p, theirs.len);
				copied = after;
			}
		}
		p = member_next(after, end, &closed);
		if (p == NULL)
			return NULL;
		if (closed)
			break;
	}
	if (out.data == NULL)
		return NULL;
	appendBinaryStringInfo(&out, copied, p - copied);
	json_row_forget();
	*newlen = out.len;
	return out.data;
}

/*
 * The text of a string or number span, unescaped, as a palloc'd C string
 * (NULL for null).  \u0000 is refused (PostgreSQL text cannot hold it).
 */
char *
json_span_text(const JsonSpan *s)
{
	StringInfoData buf;
	const char *p;
	const char *end;

	if (s->type == JSON_SPAN_NULL || s->type == JSON_SPAN_MISSING)
		return NULL;
	if (s->type != JSON_SPAN_STRING)
		return pnstrdup(s->p, s->len);

	p = s->p + 1;
	end = s->p + s->len - 1;
	/* the common case: nothing escaped */
	if (memchr(p, '\\', end - p) == NULL)
		return pnstrdup(p, end - p);

	initStringInfo(&buf);
	while (p < end)
	{
		if (*p != '\\')
		{
			appendStringInfoChar(&buf, *p++);
			continue;
		}
		p++;
		switch (*p)
		{
			case 'b':
				appendStringInfoChar(&buf, '\b');
				break;
			case 'f':
				appendStringInfoChar(&buf, '\f');
				break;
			case 'n':
				appendStringInfoChar(&buf, '\n');
				break;
			case 'r':
				appendStringInfoChar(&buf, '\r');
				break;
			case 't':
				appendStringInfoChar(&buf, '\t');
				break;
			case 'u':
				{
					unsigned int cp = (unsigned int) strtoul(pnstrdup(p + 1, 4), NULL, 16);

					p += 4;
					/* a surrogate pair */
					if (cp >= 0xD800 && cp <= 0xDBFF && p + 6 < end && p[1] == '\\' && p[2] == 'u')
					{
						unsigned int lo = (unsigned int) strtoul(pnstrdup(p + 3, 4), NULL, 16);

						if (lo >= 0xDC00 && lo <= 0xDFFF)
						{
							cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
							p += 6;
						}
					}
					if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF))
						return NULL;
					if (cp < 0x80)
						appendStringInfoChar(&buf, (char) cp);
					else if (cp < 0x800)
					{
						appendStringInfoChar(&buf, (char) (0xC0 | (cp >> 6)));
						appendStringInfoChar(&buf, (char) (0x80 | (cp & 0x3F)));
					}
					else if (cp < 0x10000)
					{
						appendStringInfoChar(&buf, (char) (0xE0 | (cp >> 12)));
						appendStringInfoChar(&buf, (char) (0x80 | ((cp >> 6) & 0x3F)));
						appendStringInfoChar(&buf, (char) (0x80 | (cp & 0x3F)));
					}
					else
					{
						appendStringInfoChar(&buf, (char) (0xF0 | (cp >> 18)));
						appendStringInfoChar(&buf, (char) (0x80 | ((cp >> 12) & 0x3F)));
						appendStringInfoChar(&buf, (char) (0x80 | ((cp >> 6) & 0x3F)));
						appendStringInfoChar(&buf, (char) (0x80 | (cp & 0x3F)));
					}
				}
				break;
			default:
				appendStringInfoChar(&buf, *p);
				break;
		}
		p++;
	}
	return buf.data;
}

/* ---------------------------------------------------------------------
 * Change envelopes
 * ---------------------------------------------------------------------
 */
static bool
parse_lsn(const JsonSpan *s, XLogRecPtr *lsn)
{
	const char *p;
	const char *end;
	uint64		half[2] = {0, 0};

	if (s->type != JSON_SPAN_STRING)
		return false;
	p = s->p + 1;
	end = s->p + s->len - 1;
	/* %X/%X: 1 to 8 hex digits each */
	for (int h = 0; h < 2; h++)
	{
		const char *start = p;

		while (p < end && isxdigit((unsigned char) *p) && p - start < 8)
		{
			int			c = (unsigned char) *p++;

			half[h] = half[h] * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
		}
		if (p == start)
			return false;
		if (h == 0 && (p >= end || *p++ != '/'))
			return false;
	}
	if (p != end)
		return false;
	*lsn = (half[0] << 32) | half[1];
	return true;
}

/*
 * An unsigned integer of at most max, written as a JSON number or as a
 * string of digits (a system identifier does not fit a double exactly, so
 * it is sent as a string).
 */
static bool
parse_unsigned(const JsonSpan *s, uint64 max, uint64 *result)
{
	const char *p = s->p;
	const char *end = s->p + s->len;
	uint64		v = 0;

	if (s->type == JSON_SPAN_STRING)
	{
		p++;
		end--;
	}
	else if (s->type != JSON_SPAN_NUMBER)
		return false;
	if (p >= end)
		return false;
	for (; p < end; p++)
	{
		if (*p < '0' || *p > '9')
			return false;
		if (v > (max - (*p - '0')) / 10)
			return false;
		v = v * 10 + (*p - '0');
	}
	*result = v;
	return true;
}

/*
 * Whether a change at *event was applied already, *applied being the
 * latest position applied for its row (or partition).  Positions compare
 * only within one cluster: when both name their cluster and the names
 * differ, the event is new (Kafka's order, in which it came after, is the
 * only order there is).  Within a cluster a later timeline is later
 * whatever its LSNs, since a promoted standby writes again from where it
 * branched off.  A side that does not name its cluster or timeline
 * (envelopes before 0.1.5, Debezium's) compares by LSN and seq alone, as
 * before, so that replays of changes first published by an older publisher
 * are still recognised.
 */
bool
position_is_replay(const SourcePosition *event, const SourcePosition *applied)
{
	if (!event->known || !applied->known)
		return false;
	if (event->system_id != 0 && applied->system_id != 0)
	{
		if (event->system_id != applied->system_id)
			return false;
		if (event->timeline != 0 && applied->timeline != 0 &&
			event->timeline != applied->timeline)
			return event->timeline < applied->timeline;
	}
	if (event->lsn != applied->lsn)
		return event->lsn < applied->lsn;
	return event->seq <= applied->seq;
}

/*
 * Parse a change envelope (DESIGN.md): op, before, after and what source
 * says about the record's origin.  Returns false with *error on anything
 * that is not a valid envelope.
 */
bool
change_parse(const char *msg, size_t len, KappaChange *change, const char **error)
{
	static const char *const top[] = {"op", "before", "after", "source"};
	static const int toplen[] = {2, 6, 5, 6};
	static const char *const src[] = {"connector", "lsn", "seq", "file", "line", "sha256", "table",
	"system_id", "timeline"};
	static const int srclen[] = {9, 3, 3, 4, 4, 6, 5, 9, 8};
	JsonSpan	t[4];
	JsonSpan	s[9];
	MemberRequest req = {4, top, toplen, t};
	MemberRequest srcreq = {9, src, srclen, s};
	const char *end = msg + len;
	const char *p = skip_ws(msg, end);

	memset(change, 0, sizeof(*change));

	/*
	 * One pass over the message: the envelope is validated, and "after"
	 * (into the row cache, for the rankings) and "source" are read on the
	 * way, not again afterwards.
	 */
	for (int i = 0; i < 9; i++)
		s[i].type = JSON_SPAN_MISSING;
	if (len > INT_MAX || p >= end || *p != '{' ||
		(p = object_scan(p, end, 0, &req, 2, 3, &srcreq)) == NULL ||
		skip_ws(p, end) != end)
	{
		*error = "message is not a JSON object";
		return false;
	}

	if (t[0].type != JSON_SPAN_STRING || t[0].len != 3)
	{
		*error = "\"op\" is missing or not a one-letter string";
		return false;
	}
	change->op = t[0].p[1];
	if (strchr("curdt", change->op) == NULL)
	{
		*error = "unknown \"op\" (expected c, u, r, d or t)";
		return false;
	}
	if (t[1].type == JSON_SPAN_OBJECT)
		change->before = t[1];
	else if (t[1].type != JSON_SPAN_NULL && t[1].type != JSON_SPAN_MISSING)
	{
		*error = "\"before\" is neither an object nor null";
		return false;
	}
	if (t[2].type == JSON_SPAN_OBJECT)
		change->after = t[2];
	else if (t[2].type != JSON_SPAN_NULL && t[2].type != JSON_SPAN_MISSING)
	{
		*error = "\"after\" is neither an object nor null";
		return false;
	}
	if (change->op != 'd' && change->op != 't' && change->after.type != JSON_SPAN_OBJECT)
	{
		*error = "\"after\" is missing for a create, update or read";
		return false;
	}
	if (change->op == 'd' && change->before.type != JSON_SPAN_OBJECT &&
		change->after.type == JSON_SPAN_OBJECT)
	{
		*error = "a delete carries \"after\"";
		return false;
	}

	if (t[3].type == JSON_SPAN_OBJECT)
	{
		if (s[0].type == JSON_SPAN_STRING && s[0].len - 2 < (int) sizeof(change->connector))
		{
			memcpy(change->connector, s[0].p + 1, s[0].len - 2);
			change->connector[s[0].len - 2] = '\0';
		}
		if (s[1].type != JSON_SPAN_MISSING && s[2].type == JSON_SPAN_NUMBER)
		{
			if (!parse_lsn(&s[1], &change->pos.lsn))
			{
				*error = "\"source.lsn\" is not an LSN";
				return false;
			}
			change->pos.seq = strtoll(s[2].p, NULL, 10);
			change->pos.known = true;
			if (s[7].type != JSON_SPAN_MISSING && s[7].type != JSON_SPAN_NULL &&
				!parse_unsigned(&s[7], PG_UINT64_MAX, &change->pos.system_id))
			{
				*error = "\"source.system_id\" is not a system identifier (digits, as a string)";
				return false;
			}
			if (s[8].type != JSON_SPAN_MISSING && s[8].type != JSON_SPAN_NULL)
			{
				uint64		tli;

				/* (stored as an integer: PostgreSQL's TimeLineID fits) */
				if (!parse_unsigned(&s[8], PG_INT32_MAX, &tli) || tli == 0)
				{
					*error = "\"source.timeline\" is not a timeline (a positive integer)";
					return false;
				}
				change->pos.timeline = (uint32) tli;
			}
		}
		if (s[3].type == JSON_SPAN_STRING)
			change->file = s[3];
		if (s[4].type == JSON_SPAN_NUMBER)
			change->line = strtoll(s[4].p, NULL, 10);
		if (s[6].type == JSON_SPAN_STRING)
			change->table = s[6];
	}
	return true;
}

/* ---------------------------------------------------------------------
 * Exact decimals
 * ---------------------------------------------------------------------
 */

/*
 * Read a decimal number (JSON number, or a string holding one such as
 * "129.90") into mantissa and scale.  Exponents are refused: amounts are
 * written as plain decimals.  Up to 36 significant digits and 36 after the
 * point.
 */
static bool
decimal_read(const JsonSpan *s, KappaDecimal *d, bool *too_large)
{
	const char *p = s->p;
	const char *end = s->p + s->len;
	bool		neg = false;
	bool		dot = false;
	int			digits = 0;
	int128		m = 0;

	*too_large = false;
	if (s->type == JSON_SPAN_STRING)
	{
		p++;
		end--;
	}
	else if (s->type != JSON_SPAN_NUMBER)
		return false;
	if (p < end && (*p == '-' || *p == '+'))
		neg = (*p++ == '-');
	if (p >= end)
		return false;
	d->scale = 0;
	for (; p < end; p++)
	{
		if (*p == '.')
		{
			if (dot)
				return false;
			dot = true;
			continue;
		}
		if (!isdigit((unsigned char) *p))
			return false;
		if (*too_large)
			continue;			/* only the spelling is read on */
		if (digits > 0 || *p != '0')
			digits++;
		m = m * 10 + (*p - '0');
		/* leading zeros after the point count here */
		if (dot)
			d->scale++;
		if (digits > 36 || d->scale > 36)
			*too_large = true;
	}
	if (dot && p[-1] == '.')
		return false;
	d->mantissa = neg ? -m : m;
	return true;
}

bool
decimal_parse(const JsonSpan *s, KappaDecimal *d)
{
	bool		too_large;

	return decimal_read(s, d, &too_large) && !too_large;
}

/*
 * Is s spelt as a plain decimal (sign, digits, at most one point), whatever
 * its size?  For error messages: decimal_parse refused it for its size.
 */
bool
decimal_spelling(const JsonSpan *s)
{
	KappaDecimal d;
	bool		too_large;

	return decimal_read(s, &d, &too_large);
}

/* 10^0 .. 10^38, made at the first use */
static const int128 *
powers_of_ten(void)
{
	static int128 pow10[39];

	if (pow10[0] == 0)
	{
		pow10[0] = 1;
		for (int i = 1; i < 39; i++)
			pow10[i] = pow10[i - 1] * 10;
	}
	return pow10;
}

/*
 * Has d at most integer_digits digits before the point and max_scale after
 * it?  (One comparison: it runs for every event.)  integer_digits +
 * max_scale must be at most 38.
 */
bool
decimal_fits(const KappaDecimal *d, int integer_digits, int max_scale)
{
	int128		m = d->mantissa < 0 ? -d->mantissa : d->mantissa;

	Assert(integer_digits + max_scale <= 38);
	return d->scale <= max_scale && m < powers_of_ten()[integer_digits + d->scale];
}

/*
 * a += b, keeping the larger scale.  False when the result would not fit
 * in 36 digits (a is then unchanged).
 */
bool
decimal_add(KappaDecimal *a, const KappaDecimal *b, int sign)
{
	const int128 *pow10 = powers_of_ten();
	int128		am = a->mantissa;
	int128		bm = b->mantissa * sign;
	int			scale = Max(a->scale, b->scale);

	if (b->scale != a->scale)
	{
		int			shift = Abs(b->scale - a->scale);
		int128	   *m = b->scale > a->scale ? &am : &bm;

		/* |m| < 10^36: shifted, it must stay below 10^36 too */
		if (shift > 36 || *m >= pow10[36 - shift] || *m <= -pow10[36 - shift])
			return false;
		*m *= pow10[shift];
	}
	am += bm;
	if (am >= pow10[36] || am <= -pow10[36])
		return false;
	a->mantissa = am;
	a->scale = scale;
	return true;
}

bool
decimal_equal(const KappaDecimal *a, const KappaDecimal *b)
{
	KappaDecimal x = *a;

	decimal_add(&x, b, -1);
	return x.mantissa == 0;
}

/* The decimal as text with exactly its scale ("129.90", "-0.01"). */
void
decimal_append(StringInfo out, const KappaDecimal *d)
{
	char		buf[64];
	int			pos = sizeof(buf);
	int128		m = d->mantissa < 0 ? -d->mantissa : d->mantissa;
	int			written = 0;

	/* at most 38 digits, a point, a leading zero, a sign */
	if (d->scale > 38)
		elog(ERROR, "decimal of scale %d cannot be written", d->scale);
	buf[--pos] = '\0';
	do
	{
		buf[--pos] = '0' + (int) (m % 10);
		m /= 10;
		written++;
		if (written == d->scale)
			buf[--pos] = '.';
	} while (m > 0 || written <= d->scale);
	if (buf[pos] == '.')
		buf[--pos] = '0';
	if (d->mantissa < 0)
		buf[--pos] = '-';
	appendStringInfoString(out, buf + pos);
}

/* ---------------------------------------------------------------------
 * Times
 * ---------------------------------------------------------------------
 */
static int
digits_at(const char *p, int n)
{
	int			v = 0;

	for (int i = 0; i < n; i++)
	{
		if (!isdigit((unsigned char) p[i]))
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	return v;
}

/*
 * An ISO-8601 date-time with a zone, p to end: YYYY-MM-DD[T ]HH:MM[:SS[.fraction]]
 * followed by Z, +HH, +HH:MM or +HHMM.  Times without a zone are refused:
 * an event time must be an instant.
 *
 * as_timestamptz_in narrows that to spellings that timestamptz_in reads to
 * the same value, whatever the session's TimeZone and DateStyle (the CSV
 * inbox decodes its common spellings so): seconds required, at most six
 * fraction digits (timestamptz_in rounds more, this would truncate), an
 * upper-case Z, years from 1000, and two digits after an offset's colon.
 */
bool
iso_time_parse(const char *p, const char *end, bool as_timestamptz_in, TimestampTz *result)
{
	struct pg_tm tm;
	fsec_t		fsec = 0;
	int			tz = 0;
	Timestamp	ts;

	if (end - p < 16)
		return false;

	memset(&tm, 0, sizeof(tm));
	tm.tm_year = digits_at(p, 4);
	tm.tm_mon = digits_at(p + 5, 2);
	tm.tm_mday = digits_at(p + 8, 2);
	tm.tm_hour = digits_at(p + 11, 2);
	tm.tm_min = digits_at(p + 14, 2);
	if (tm.tm_year < (as_timestamptz_in ? 1000 : 0) || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
		tm.tm_hour < 0 || tm.tm_hour > 23 || tm.tm_min < 0 || tm.tm_min > 59 ||
		p[4] != '-' || p[7] != '-' || (p[10] != 'T' && p[10] != ' ') || p[13] != ':')
		return false;
	if (tm.tm_mday > day_tab[isleap(tm.tm_year)][tm.tm_mon - 1])
		return false;
	p += 16;
	if (p < end && *p == ':')
	{
		if (end - p < 3 || (tm.tm_sec = digits_at(p + 1, 2)) < 0 || tm.tm_sec > 59)
			return false;
		p += 3;
		if (p < end && *p == '.')
		{
			int			scale = 100000;
			const char *digits = ++p;

			if (p >= end || !isdigit((unsigned char) *p))
				return false;
			while (p < end && isdigit((unsigned char) *p))
			{
				fsec += (*p - '0') * scale;
				scale /= 10;
				p++;
			}
			if (as_timestamptz_in && p - digits > 6)
				return false;
		}
	}
	else if (as_timestamptz_in)
		return false;
	if (p >= end)
		return false;			/* no zone */
	if (*p == 'Z' || (*p == 'z' && !as_timestamptz_in))
	{
		if (p + 1 != end)
			return false;
	}
	else if (*p == '+' || *p == '-')
	{
		int			sign = (*p == '-') ? 1 : -1;	/* PostgreSQL: seconds west */
		int			hh = digits_at(p + 1, 2),
					mm = 0;
		const char *q = p + 3;

		if (end - p < 3 || hh < 0 || hh > 15)
			return false;
		if (q < end && *q == ':')
		{
			q++;
			if (as_timestamptz_in && q == end)
				return false;
		}
		if (q < end)
		{
			if (end - q != 2 || (mm = digits_at(q, 2)) < 0 || mm > 59)
				return false;
		}
		tz = sign * (hh * SECS_PER_HOUR + mm * SECS_PER_MINUTE);
	}
	else
		return false;

	if (tm2timestamp(&tm, fsec, &tz, &ts) != 0)
		return false;
	*result = ts;
	return IS_VALID_TIMESTAMP(ts);
}

/*
 * An event time: an ISO-8601 string (iso_time_parse), or a number of
 * microseconds since the Unix epoch (Debezium's MicroTimestamp).
 */
bool
timestamp_parse(const JsonSpan *s, TimestampTz *result)
{
	if (s->type == JSON_SPAN_NUMBER)
	{
		char	   *endptr;
		char		buf[32];
		int64		us;

		if (s->len >= (int) sizeof(buf))
			return false;
		memcpy(buf, s->p, s->len);
		buf[s->len] = '\0';
		errno = 0;
		us = strtoll(buf, &endptr, 10);
		if (errno != 0 || *endptr != '\0')
			return false;
		/* (near INT64_MIN the subtraction would wrap to a valid time) */
		if (pg_sub_s64_overflow(us, (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY,
								result))
			return false;
		return IS_VALID_TIMESTAMP(*result);
	}
	if (s->type != JSON_SPAN_STRING)
		return false;
	return iso_time_parse(s->p + 1, s->p + s->len - 1, false, result);
}
