/*-------------------------------------------------------------------------
 *
 * csv.h
 *	  The CSV inbox: what its worker (csv_worker.c) and the conversion of
 *	  sales rows into change envelopes (csv_sales.c) share.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_CSV_H
#define KAPPA_CSV_H

#include "lib/stringinfo.h"
#include "sources/csv_parse.h"

/* The columns of the reference sales table, in its order. */
typedef enum CsvSalesColumn
{
	CSV_COL_SALE_ID,
	CSV_COL_STORE_ID,
	CSV_COL_SELLER_ID,
	CSV_COL_SELLER_NAME,
	CSV_COL_CITY,
	CSV_COL_COUNTRY,
	CSV_COL_AMOUNT,
	CSV_COL_CURRENCY,
	CSV_COL_SOLD_AT,
	CSV_NCOLUMNS
} CsvSalesColumn;

/* Where each column is in a file's records (from its header). */
typedef struct CsvSalesMap
{
	int			nfields;		/* fields in the header */
	int			field[CSV_NCOLUMNS];	/* -1: absent (only currency may be) */
} CsvSalesMap;

/* What every envelope of one file says in "source". */
typedef struct CsvEnvelopeSource
{
	char	   *before_line;	/* ...,"source":{"connector":"csv","file":"x","line": */
	char	   *after_line;		/* ,"sha256":"..."},"ts_ms": */
	int			before_len;
	int			after_len;
} CsvEnvelopeSource;

extern char *csv_map_header(const CsvRecord *header, CsvSalesMap *map);
extern void csv_envelope_source(CsvEnvelopeSource *src, const char *file,
								const char *sha256_hex);
extern void csv_sales_check_settings(void);
extern char *csv_sales_envelope(const CsvSalesMap *map, const CsvRecord *rec,
								const CsvEnvelopeSource *src, int64 ts_ms,
								StringInfo key, StringInfo value);

#endif							/* KAPPA_CSV_H */
