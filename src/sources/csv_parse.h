/*-------------------------------------------------------------------------
 *
 * csv_parse.h
 *	  A streaming RFC 4180 reader: records one at a time from a file
 *	  descriptor, with the line each record starts on and its raw bytes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_CSV_PARSE_H
#define KAPPA_CSV_PARSE_H

#include "lib/stringinfo.h"

/* A record longer than this is refused (almost always an unclosed quote). */
#define CSV_MAX_RECORD_BYTES	(1024 * 1024)

typedef struct CsvRecord
{
	int64		line;			/* line (1-based) the record starts on */
	int			nfields;
	char	  **fields;			/* values, unescaped, NUL-terminated */
	int		   *lengths;
	bool	   *quoted;			/* an unquoted empty field is a NULL */
	const char *raw;			/* the record as in the file, line end excluded */
	size_t		rawlen;
	const char *error;			/* why the record is malformed, or NULL */
} CsvRecord;

typedef struct CsvReader CsvReader;

/* Reads from fd (which the caller owns) from its current offset. */
extern CsvReader *csv_reader_create(int fd, const char *filename);
extern bool csv_read_record(CsvReader *reader, CsvRecord *record);
extern int64 csv_bytes_read(CsvReader *reader);
extern void csv_reader_free(CsvReader *reader);

#endif							/* KAPPA_CSV_PARSE_H */
