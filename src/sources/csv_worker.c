/*-------------------------------------------------------------------------
 *
 * csv_worker.c
 *	  The CSV inbox worker: stores drop sales files into a directory; every
 *	  valid row goes to Kafka as a change envelope, every invalid one to
 *	  kappa.dead_letters, and the file moves to processed/ or failed/.
 *
 * Which files: regular files directly inside kappa.csv_inbox whose names
 * match kappa.csv_pattern.  Dot-files (the usual temporary names of
 * writers that rename into place), symbolic links, directories and files
 * with more than one hard link are ignored, so nothing outside the inbox
 * can be read through it.  A file is taken once its size and modification
 * time have stayed the same for kappa.csv_stable_ms (two looks, and an
 * mtime at least that old): a file still being written is left alone.
 *
 * How a file is read: once to compute its SHA-256 and check that it is
 * UTF-8, then again to parse it (csv_parse.c) and convert each row
 * (csv_sales.c), producing the envelopes into one delivery group.  When
 * Kafka has acknowledged them all, ONE transaction records the file as
 * processed in the ledger kappa.csv_files and inserts its dead letters;
 * only then is the file moved.  So:
 *
 *	- a crash before that commit leaves the file in the inbox: it is read
 *	  again from the start, and the rows sent twice are identical replays
 *	  (same source.file, line and sha256) that the stream worker drops;
 *	  its dead letters were never stored, so they are stored once;
 *	- a crash after the commit but before the move is finished at the next
 *	  look (the ledger names the destination);
 *	- content whose SHA-256 is already processed (the same file dropped
 *	  again, under any name) is moved to processed/ without sending
 *	  anything and recorded as a duplicate;
 *	- a file that cannot be read at all (not UTF-8, no header, missing
 *	  required columns) goes to failed/ with a <name>.reason file; a file
 *	  that made the worker fail CSV_MAX_ATTEMPTS times too.  Nothing is
 *	  retried forever.
 *
 * A Kafka delivery failure leaves the file where it is and sends it again
 * after a backoff: at-least-once into Kafka, exactly-once into the results.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "cdc/envelope.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "kafka/kafka.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "sources/csv.h"
#include "sources/sources.h"
#include "storage/buffile.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* ---------------------------------------------------------------------
 * Configuration
 * ---------------------------------------------------------------------
 */
static bool kappa_csv_enabled = true;
static char *kappa_csv_inbox = NULL;
static char *kappa_csv_pattern = NULL;
static int	kappa_csv_poll_interval = 1000;
static int	kappa_csv_stable_ms = 2000;
static int	kappa_csv_date_order = 0;

/* kappa.csv_date_order: DateStyle's second part, for timestamptz_in */
static const struct config_enum_entry csv_date_orders[] = {
	{"ymd", 0, false},
	{"dmy", 1, false},
	{"mdy", 2, false},
	{NULL, 0, false}
};
static const char *const csv_date_styles[] = {"ISO, YMD", "ISO, DMY", "ISO, MDY"};

/* A file that made the worker fail this many times goes to failed/. */
#define CSV_MAX_ATTEMPTS	5
#define CSV_READ_CHUNK		(1024 * 1024)
#define CSV_SERVE_EVERY		1024	/* rows between delivery-report polls */
#define CSV_STATE_EVERY_MS	250
#define CSV_MAX_BACKOFF_MS	60000
#define CSV_MAX_PENDING_FILES 4	/* files awaiting acknowledgements at once */

static bool
check_csv_inbox(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;

	if (p[0] == '\0')
		return true;
	if (!is_absolute_path(p))
	{
		GUC_check_errdetail("kappa.csv_inbox must be an absolute path.");
		return false;
	}
	for (; *p; p++)
	{
		if ((unsigned char) *p < 0x20 || *p == 0x7f)
		{
			GUC_check_errdetail("kappa.csv_inbox must not contain control characters.");
			return false;
		}
		/* no "." or ".." components: the path says where it leads */
		if (*p == '/' && p[1] == '.' &&
			(p[2] == '/' || p[2] == '\0' || (p[2] == '.' && (p[3] == '/' || p[3] == '\0'))))
		{
			GUC_check_errdetail("kappa.csv_inbox must not contain \".\" or \"..\" components.");
			return false;
		}
	}
	return true;
}

static bool
check_csv_pattern(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;

	if (p[0] == '\0')
	{
		GUC_check_errdetail("kappa.csv_pattern must not be empty.");
		return false;
	}
	if (strlen(p) > 255)
	{
		GUC_check_errdetail("kappa.csv_pattern is longer than a file name can be.");
		return false;
	}
	if (strchr(p, '/') != NULL)
	{
		GUC_check_errdetail("kappa.csv_pattern matches file names in the inbox: it must not contain \"/\".");
		return false;
	}
	if (p[0] == '.')
	{
		GUC_check_errdetail("Files whose names start with \".\" are never taken (writers use such names until a file is complete).");
		return false;
	}
	return true;
}

void
csv_define_gucs(void)
{
	DefineCustomBoolVariable("kappa.csv_enabled",
							 "Runs the CSV inbox worker.",
							 "The worker idles while kappa.csv_inbox is empty.",
							 &kappa_csv_enabled,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	/*
	 * A path on the server: only superusers may see it (the setting is
	 * PGC_SIGHUP, so only they can change it, in postgresql.conf or with
	 * ALTER SYSTEM).
	 */
	DefineCustomStringVariable("kappa.csv_inbox",
							   "Directory the CSV inbox worker takes sales files from (absolute path; empty: off).",
							   "Superuser-only.  The server's user must be able to read and write it; processed/ and failed/ are created inside.",
							   &kappa_csv_inbox,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_csv_inbox, NULL, NULL);

	DefineCustomStringVariable("kappa.csv_pattern",
							   "Names of the files the CSV inbox worker takes (a shell glob).",
							   NULL,
							   &kappa_csv_pattern,
							   "sales_*.csv",
							   PGC_SIGHUP, 0,
							   check_csv_pattern, NULL, NULL);

	DefineCustomIntVariable("kappa.csv_poll_interval",
							"Time between two looks at the CSV inbox.",
							NULL,
							&kappa_csv_poll_interval,
							1000, 10, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	/*
	 * The stores' convention, not the server's DateStyle: a file must read
	 * the same on any server, and again after a crash.
	 */
	DefineCustomEnumVariable("kappa.csv_date_order",
							 "How the CSV inbox reads dates written with numbers only, such as 03/04/2026 or 26-11-21.",
							 "ymd, dmy or mdy, as the second part of DateStyle; dates written year first (2026-11-21) read the same under each.",
							 &kappa_csv_date_order,
							 0, csv_date_orders,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.csv_stable_ms",
							"Time a file's size and modification time must stay unchanged before it is taken.",
							"0 takes files at first sight: only for writers that rename complete files into the inbox.",
							&kappa_csv_stable_ms,
							2000, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/* ---------------------------------------------------------------------
 * The worker's state
 * ---------------------------------------------------------------------
 */

/* A file seen in the inbox, and how it looked then. */
typedef struct CsvCandidate
{
	char		name[NAME_MAX + 1]; /* hash key */
	off_t		size;
	int64		mtime_ns;
	int64		ctime_ns;		/* changes with chmod and chown too */
	uint64		scan;			/* the last scan that saw it */
	bool		ignored;		/* not a plain file: reported once */
	bool		unreadable;		/* could not be opened: until it changes */
} CsvCandidate;

typedef struct CsvWorker
{
	SourceStats *stats;
	KafkaClient *producer;
	ResourceOwner owner;		/* for the SHA-256 contexts */
	HTAB	   *candidates;
	uint64		scans;
	bool		inbox_ok;		/* the last look at the inbox worked */
	bool		extension_seen;
	bool		moves_checked;	/* reconcile_moves() done for this inbox */
	char		problem[512];	/* last problem, logged once */
	MemoryContext saved_cxt;	/* the context around a ledger transaction */
	long		backoff_ms;		/* after a Kafka delivery failure */

	/*
	 * Which resumed files count an attempt (ledger_begin): those of the
	 * previous run that its end may be blamed on.  See read_exit_record().
	 */
	TimestampTz started_at;		/* this run's start */
	bool		resume_counts_all;	/* the previous run's end is unknown */
	int64		resume_blamed_id;	/* else only this ledger row counts */
	int64		current_id;		/* ledger row being worked on, or 0 */
	bool		failed;			/* this run ends in an ERROR */
} CsvWorker;

/* set by SIGTERM, read at exit: a stop is nobody's fault */
static volatile sig_atomic_t csv_terminating = false;

static CsvWorker worker;

/* One file being dealt with. */
typedef struct CsvFile
{
	const char *name;
	int			dirfd;			/* the inbox */
	int			processed_fd;	/* its processed/ and failed/ */
	int			failed_fd;
	int			fd;
	struct stat st;
	char		sha256[PG_SHA256_DIGEST_STRING_LENGTH];
	int64		ledger_id;
	int			attempts;
	int			date_order;		/* kappa.csv_date_order at the start */
	int64		rows_sent;
	int64		rows_rejected;
	BufFile    *dead_letters;	/* line, raw record, reason of refused rows */
	KafkaDelivery delivery;		/* the file's rows in flight */
	MemoryContext cxt;			/* everything of the file's */
} CsvFile;

/*
 * Name the file whose step starts now (NULL: none), for the exit record an
 * ERROR leaves: the next run counts an attempt against that file only.
 */
static inline void
work_on(const CsvFile *f)
{
	worker.current_id = f ? f->ledger_id : 0;
}

/* What a refused row leaves in CsvFile.dead_letters, before its bytes. */
typedef struct CsvDeadLetterHeader
{
	int64		line;
	uint32		rawlen;
	uint32		reasonlen;
} CsvDeadLetterHeader;

typedef enum CsvSendResult
{
	CSV_SENT,					/* every valid row produced */
	CSV_UNREADABLE,				/* the file cannot be read: *reason */
} CsvSendResult;

static void reload_configuration(void);

/* ---------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------
 */
static int64
stat_mtime_ns(const struct stat *st)
{
	return (int64) st->st_mtim.tv_sec * INT64CONST(1000000000) + st->st_mtim.tv_nsec;
}

static int64
stat_ctime_ns(const struct stat *st)
{
	return (int64) st->st_ctim.tv_sec * INT64CONST(1000000000) + st->st_ctim.tv_nsec;
}

static int64
realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64) ts.tv_sec * INT64CONST(1000000000) + ts.tv_nsec;
}

/* An inbox-level problem: in the status at once, in the log once. */
static void
report_problem(const char *fmt,...) pg_attribute_printf(1, 2);

static void
report_problem(const char *fmt,...)
{
	char		buf[512];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	source_stats_set_state(worker.stats, "%s", buf);
	if (strcmp(buf, worker.problem) != 0)
	{
		ereport(LOG, (errmsg("pg_kappa csv inbox: %s", buf)));
		source_stats_error(worker.stats, buf);
		strlcpy(worker.problem, buf, sizeof(worker.problem));
	}
}

static void
wait_ms(long ms)
{
	int			rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							   ms, PG_WAIT_EXTENSION);

	if (rc & WL_LATCH_SET)
		ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Ledger transactions.  Starting and committing a transaction switch memory
 * contexts; the caller's is restored after the commit.  What is allocated
 * in between lives in SPI's context and is gone after the commit.
 */
static void
begin_transaction(void)
{
	worker.saved_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
commit_transaction(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	MemoryContextSwitchTo(worker.saved_cxt);
}

/* Run a statement of the ledger; returns SPI_processed. */
static uint64
ledger_execute(const char *sql, int nargs, Oid *types, Datum *values,
			   const char *nulls, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "ledger statement failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

static int64
spi_int64(int row, int col)
{
	bool		isnull;
	Datum		d;

	/* (a ledger row deleted by hand while its file was read) */
	if ((uint64) row >= SPI_processed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_kappa csv inbox: a row of kappa.csv_files is missing"),
				 errdetail("The ledger row of the file being read was deleted.")));
	d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);
	return isnull ? 0 : DatumGetInt64(d);
}

/* A text column of an SPI result, copied into cxt (NULL stays NULL). */
static char *
spi_text(int row, int col, MemoryContext cxt)
{
	char	   *s = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);

	return s ? MemoryContextStrdup(cxt, s) : NULL;
}

/* ---------------------------------------------------------------------
 * Files and directories
 * ---------------------------------------------------------------------
 */

/* processed/ or failed/: created if missing, never a symbolic link. */
static int
open_subdir(int dirfd, const char *sub)
{
	int			fd;
	struct stat st;

	if (mkdirat(dirfd, sub, S_IRWXU) != 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s/%s\": %m", kappa_csv_inbox, sub)));
	fd = openat(dirfd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open directory \"%s/%s\": %m", kappa_csv_inbox, sub),
				 errhint("processed/ and failed/ must be directories inside the inbox, not symbolic links.")));

	/*
	 * Stores may be allowed to write the inbox, and so to make processed/
	 * or failed/ before the worker does: such a directory, or one others
	 * may write to, would let them change or remove what was recorded as
	 * processed.  The worker makes its own, mode 0700.
	 */
	if (fstat(fd, &st) != 0 || st.st_uid != geteuid() || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
	{
		close(fd);
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("directory \"%s/%s\" is not the server's own", kappa_csv_inbox, sub),
				 errdetail("It must be owned by the database server's user and not writable by its group or others."),
				 errhint("Remove it and let the worker create it, or chown it to the server's user and chmod go-w it.")));
	}
	return fd;
}

/*
 * A name in subfd not taken yet: name, name.1, name.2, ..., of at most
 * NAME_MAX - reserve bytes (failed/ keeps room for ".reason"): a longer
 * name is cut before its suffix, at a UTF-8 character's start.  (Too long,
 * the name would have failed the move at every restart of the worker, and
 * held up every file after it.)
 */
static char *
choose_destination(int subfd, const char *name, int reserve)
{
	struct stat st;

	for (int i = 0;; i++)
	{
		char		suffix[16] = "";
		int			keep = strlen(name);
		char	   *candidate;

		if (i > 0)
			snprintf(suffix, sizeof(suffix), ".%d", i);
		if (keep + (int) strlen(suffix) > NAME_MAX - reserve)
		{
			keep = NAME_MAX - reserve - (int) strlen(suffix);
			while (keep > 0 && (name[keep] & 0xC0) == 0x80)
				keep--;
		}
		candidate = psprintf("%.*s%s", keep, name, suffix);
		if (fstatat(subfd, candidate, &st, AT_SYMLINK_NOFOLLOW) != 0)
		{
			if (errno == ENOENT)
				return candidate;
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not stat file \"%s\": %m", candidate)));
		}
		pfree(candidate);
	}
}

/*
 * Move the file from the inbox into subfd under dest, never replacing a
 * file there.  Same file system: atomic.
 *
 * The move is by name, and the name may no longer be the file that was
 * read: a store can put a new version in its place (written aside, then
 * renamed over it) while the rows of the first wait for Kafka.  So the name
 * must still be the inode that was read; if it is not, nothing is moved
 * and false is returned: the new file stays in the inbox, to be read as a
 * file of its own.  (What is left is the instant between this check and
 * the rename.)
 */
typedef enum CsvMove
{
	CSV_MOVED,
	CSV_MOVE_REPLACED,			/* the name is another file now */
	CSV_MOVE_GONE,				/* the name is gone (deleted by the store) */
	CSV_MOVE_FAILED				/* the system refused (errno says why) */
} CsvMove;

/*
 * sub: processed or failed, NULL for the inbox itself.  Some file systems
 * cannot fsync a directory (EBADF, EINVAL, ENOTSUP, as PostgreSQL's own
 * fsync_fname allows): nothing more can be done there.
 */
static void
sync_directory(int dirfd, const char *sub)
{
	if (fsync(dirfd) != 0 && errno != EBADF && errno != EINVAL && errno != ENOTSUP)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync directory \"%s%s%s\": %m",
						kappa_csv_inbox, sub ? "/" : "", sub ? sub : "")));
}

static CsvMove
move_file(CsvFile *f, int subfd, const char *sub, const char *dest)
{
	struct stat st;

	if (fstatat(f->dirfd, f->name, &st, AT_SYMLINK_NOFOLLOW) != 0)
		return errno == ENOENT ? CSV_MOVE_GONE : CSV_MOVE_FAILED;
	if (st.st_dev != f->st.st_dev || st.st_ino != f->st.st_ino)
		return CSV_MOVE_REPLACED;
	if (renameat2(f->dirfd, f->name, subfd, dest, RENAME_NOREPLACE) != 0)
	{
		/*
		 * A file system without RENAME_NOREPLACE: link, then unlink (a
		 * crash between the two is finished by reconcile_moves).
		 */
		if ((errno != EINVAL && errno != ENOSYS) ||
			linkat(f->dirfd, f->name, subfd, dest, 0) != 0 ||
			unlinkat(f->dirfd, f->name, 0) != 0)
			return CSV_MOVE_FAILED;
	}

	/*
	 * The move is durable before the ledger says it happened (as
	 * PostgreSQL's durable_rename): after a power loss the file must not be
	 * back in the inbox, read again, while the ledger calls it moved.
	 */
	sync_directory(subfd, sub);
	sync_directory(f->dirfd, NULL);
	return CSV_MOVED;
}

static void forget_candidate(const char *name);

/*
 * The file read is no longer under its name: its ledger row (the latest of
 * its name and content) says it was never moved, the problem is shown, and
 * the name is looked at again.
 */
static void
file_replaced(CsvFile *f, const char *recorded_as, bool gone)
{
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];

	values[0] = CStringGetTextDatum(f->name);
	values[1] = CStringGetTextDatum(f->sha256);
	values[2] = CStringGetTextDatum(gone ?
									"deleted from the inbox before it was moved" :
									"replaced in the inbox by another file of the same name before it was moved");
	begin_transaction();
	ledger_execute("UPDATE kappa.csv_files SET moved_to = NULL, "
				   "error = coalesce(error || '; ', '') || $3 "
				   "WHERE id = (SELECT max(id) FROM kappa.csv_files WHERE name = $1 AND sha256 = $2)",
				   3, types, values, NULL, SPI_OK_UPDATE);
	commit_transaction();
	if (gone)
		report_problem("\"%s\" was deleted from the inbox after it was read; it is recorded as %s, with nothing to move",
					   f->name, recorded_as);
	else
		report_problem("\"%s\" was replaced by another file of the same name after it was read; the version read is recorded as %s, the new one will be read as a file of its own",
					   f->name, recorded_as);
	forget_candidate(f->name);
}

static void
write_reason_file(int subfd, const char *dest, const char *reason)
{
	char	   *name = psprintf("%s.reason", dest);
	char	   *text = psprintf("%s\n", reason);
	int			fd = openat(subfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
							S_IRUSR | S_IWUSR);

	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t) strlen(text) ||
		fsync(fd) != 0 || close(fd) != 0)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("pg_kappa csv inbox: could not write \"failed/%s\": %m", name)));
}

/*
 * "processed/x.csv" -> the directory fd (of processed_fd and failed_fd) and
 * the name inside it
 */
static bool
split_destination(int processed_fd, int failed_fd, const char *moved_to, int *subfd,
				  const char **sub, const char **dest)
{
	if (strncmp(moved_to, "processed/", 10) == 0)
	{
		*subfd = processed_fd;
		*sub = "processed";
		*dest = moved_to + 10;
		return true;
	}
	if (strncmp(moved_to, "failed/", 7) == 0)
	{
		*subfd = failed_fd;
		*sub = "failed";
		*dest = moved_to + 7;
		return true;
	}
	return false;
}

/* ---------------------------------------------------------------------
 * Looking at the inbox
 * ---------------------------------------------------------------------
 */

static int
compare_names(const ListCell *a, const ListCell *b)
{
	return strcmp(lfirst(a), lfirst(b));
}

/*
 * A crash between a file's move and the commit that records it as moved
 * (mark_moved) leaves a ledger row whose move looks undone while the file
 * is in processed/ or failed/.  Had the file been put back into the inbox
 * later (to try a failed file again), it would have been moved back as if
 * that crash had just happened, unread.  Once per inbox, before its first
 * look at it, the worker records such moves as done: the file is no longer
 * in the inbox and is where the row says.  A row whose file is in the
 * inbox is left to ledger_begin, which finishes the move if it was not
 * done.
 */
static void
reconcile_moves(int inboxfd)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			subfds[2];
	StringInfoData ids;
	int			ndone = 0;
	uint64		n;

	for (int i = 0; i < 2; i++)
		subfds[i] = openat(inboxfd, i == 0 ? "processed" : "failed",
						   O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	begin_transaction();
	n = ledger_execute("SELECT id, name, moved_to FROM kappa.csv_files "
					   "WHERE moved_to IS NOT NULL AND moved_at IS NULL",
					   0, NULL, NULL, NULL, SPI_OK_SELECT);
	initStringInfo(&ids);
	for (uint64 r = 0; r < n; r++)
	{
		char	   *name = spi_text(r, 2, cxt);
		char	   *moved_to = spi_text(r, 3, cxt);
		int			subfd;
		const char *sub;
		const char *dest;
		struct stat st;

		struct stat in_st;

		if (name == NULL ||
			!split_destination(subfds[0], subfds[1], moved_to, &subfd, &sub, &dest) || subfd < 0 ||
			fstatat(subfd, dest, &st, AT_SYMLINK_NOFOLLOW) != 0)
			continue;
		if (fstatat(inboxfd, name, &in_st, AT_SYMLINK_NOFOLLOW) == 0)
		{
			/*
			 * Both names are the same file: a move by link and unlink (a
			 * file system without RENAME_NOREPLACE) stopped between the two.
			 * The inbox name, with its second link, would be ignored for
			 * ever; it goes.
			 */
			if (in_st.st_dev != st.st_dev || in_st.st_ino != st.st_ino ||
				unlinkat(inboxfd, name, 0) != 0)
				continue;
		}
		else if (errno != ENOENT)
			continue;
		appendStringInfo(&ids, "%s" INT64_FORMAT, ndone++ ? "," : "{", spi_int64(r, 1));
	}
	if (ndone > 0)
	{
		Oid			types[1] = {TEXTOID};
		Datum		values[1];

		appendStringInfoChar(&ids, '}');
		values[0] = CStringGetTextDatum(ids.data);
		ledger_execute("UPDATE kappa.csv_files SET moved_at = now() WHERE id = ANY ($1::bigint[])",
					   1, types, values, NULL, SPI_OK_UPDATE);
		ereport(LOG,
				(errmsg("pg_kappa csv inbox: %d file moves interrupted by a restart were found done", ndone),
				 errdetail("kappa.csv_files ids %s.", ids.data)));
	}
	commit_transaction();
	for (int i = 0; i < 2; i++)
		if (subfds[i] >= 0)
			close(subfds[i]);
}

/*
 * The files that are ready, in name order (store files are named by time).
 * Allocates in the current memory context.
 */
static List *
scan_inbox(void)
{
	DIR		   *dir;
	struct dirent *de;
	List	   *ready = NIL;
	int64		now_ns = realtime_ns();
	HASH_SEQ_STATUS seq;
	CsvCandidate *c;

	dir = opendir(kappa_csv_inbox);
	if (dir == NULL)
	{
		worker.inbox_ok = false;
		report_problem("could not open inbox directory \"%s\": %m", kappa_csv_inbox);
		return NIL;
	}
	for (int i = 0; i < 2; i++)
	{
		const char *sub = i == 0 ? "processed" : "failed";
		struct stat st;

		/* see open_subdir: nothing is taken while one is not the server's own */
		if (fstatat(dirfd(dir), sub, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			(!S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
			 (st.st_mode & (S_IWGRP | S_IWOTH)) != 0))
		{
			closedir(dir);
			worker.inbox_ok = false;
			report_problem("\"%s/%s\" is not a directory of the server's own (owned by its user, not writable by group or others); no file is taken until it is",
						   kappa_csv_inbox, sub);
			return NIL;
		}
	}
	worker.inbox_ok = true;
	worker.problem[0] = '\0';
	if (!worker.moves_checked)
	{
		reconcile_moves(dirfd(dir));
		worker.moves_checked = true;
	}
	worker.scans++;
	while ((errno = 0, de = readdir(dir)) != NULL)
	{
		struct stat st;
		bool		found;
		bool		stable;

		if (de->d_name[0] == '.' || strlen(de->d_name) > NAME_MAX ||
			fnmatch(kappa_csv_pattern, de->d_name, FNM_PERIOD) != 0)
			continue;
		if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
			continue;			/* gone already */

		c = hash_search(worker.candidates, de->d_name, HASH_ENTER, &found);

		/*
		 * The name goes into the ledger (text) and into every event
		 * (JSON, UTF-8): a name in another encoding would be invalid in
		 * both.  It is not quoted in the log for the same reason.
		 */
		if (!pg_verify_mbstr(PG_UTF8, de->d_name, strlen(de->d_name), true) ||
			!pg_verifymbstr(de->d_name, strlen(de->d_name), true))
		{
			if (!found || !c->ignored)
				ereport(LOG,
						(errmsg("pg_kappa csv inbox: ignoring a file whose name is not valid UTF-8"),
						 errdetail("Rename it; file names are recorded in kappa.csv_files and sent in every event.")));
			c->ignored = true;
			c->scan = worker.scans;
			continue;
		}
		if (!S_ISREG(st.st_mode) || st.st_nlink != 1)
		{
			if (!found || !c->ignored)
				ereport(LOG,
						(errmsg("pg_kappa csv inbox: ignoring \"%s\": %s", de->d_name,
								S_ISLNK(st.st_mode) ? "a symbolic link" :
								S_ISDIR(st.st_mode) ? "a directory" :
								S_ISREG(st.st_mode) ? "a file with more than one hard link" :
								"not a regular file"),
						 errdetail("Only regular files directly inside kappa.csv_inbox are read.")));
			c->ignored = true;
			c->scan = worker.scans;
			continue;
		}

		/* (its permissions fixed, it is tried again) */
		if (found && c->unreadable && c->size == st.st_size &&
			c->mtime_ns == stat_mtime_ns(&st) && c->ctime_ns == stat_ctime_ns(&st))
		{
			c->scan = worker.scans;
			continue;
		}
		c->unreadable = false;
		if (kappa_csv_stable_ms == 0)
			stable = true;
		else
			stable = found && !c->ignored &&
				c->size == st.st_size && c->mtime_ns == stat_mtime_ns(&st) &&
				now_ns - c->mtime_ns >= (int64) kappa_csv_stable_ms * 1000000;
		c->ignored = false;
		c->size = st.st_size;
		c->mtime_ns = stat_mtime_ns(&st);
		c->ctime_ns = stat_ctime_ns(&st);
		c->scan = worker.scans;
		if (stable)
			ready = lappend(ready, pstrdup(de->d_name));
	}
	if (errno != 0)
	{
		worker.inbox_ok = false;
		report_problem("could not read inbox directory \"%s\": %m", kappa_csv_inbox);
	}
	closedir(dir);

	/* forget files that are gone */
	hash_seq_init(&seq, worker.candidates);
	while ((c = hash_seq_search(&seq)) != NULL)
	{
		if (c->scan != worker.scans)
			hash_search(worker.candidates, c->name, HASH_REMOVE, NULL);
	}

	list_sort(ready, compare_names);
	return ready;
}

/* Look at a file again from scratch (it changed while it was read). */
static void
forget_candidate(const char *name)
{
	hash_search(worker.candidates, name, HASH_REMOVE, NULL);
}

/*
 * A file that could not be opened, or moved, is left alone until it
 * changes or the configuration is reloaded (after the cause was fixed).
 */
static void
mark_unreadable(const char *name)
{
	CsvCandidate *c = hash_search(worker.candidates, name, HASH_FIND, NULL);

	if (c)
		c->unreadable = true;
}

static void
retry_unreadable(void)
{
	HASH_SEQ_STATUS seq;
	CsvCandidate *c;

	hash_seq_init(&seq, worker.candidates);
	while ((c = hash_seq_search(&seq)) != NULL)
		c->unreadable = false;
}

/* ---------------------------------------------------------------------
 * First reading: SHA-256 and UTF-8
 * ---------------------------------------------------------------------
 */

/* Bytes at the end of buf that start a UTF-8 sequence not complete yet. */
static int
incomplete_utf8_tail(const unsigned char *s, int len)
{
	int			need = pg_utf_mblen(s);

	if (need <= len || s[0] < 0xC2 || s[0] > 0xF4)
		return 0;
	for (int i = 1; i < len; i++)
	{
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	}
	return len;
}

/*
 * SHA-256 of a file's bytes.  The context belongs to the worker's resource
 * owner, not to a transaction's: the reading spans none or several.
 */
static pg_cryptohash_ctx *
sha256_begin(void)
{
	ResourceOwner saved = CurrentResourceOwner;
	pg_cryptohash_ctx *ctx;

	CurrentResourceOwner = worker.owner;
	ctx = pg_cryptohash_create(PG_SHA256);
	CurrentResourceOwner = saved;
	if (pg_cryptohash_init(ctx) < 0)
		elog(ERROR, "could not initialize SHA-256: %s", pg_cryptohash_error(ctx));
	return ctx;
}

static void
sha256_add(pg_cryptohash_ctx *ctx, const unsigned char *data, size_t len)
{
	if (pg_cryptohash_update(ctx, data, len) < 0)
		elog(ERROR, "could not compute SHA-256: %s", pg_cryptohash_error(ctx));
}

/* The digest in hex, NUL-terminated, into hex[PG_SHA256_DIGEST_LENGTH * 2 + 1]. */
static void
sha256_end(pg_cryptohash_ctx *ctx, char *hex)
{
	uint8		digest[PG_SHA256_DIGEST_LENGTH];

	if (pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute SHA-256: %s", pg_cryptohash_error(ctx));
	pg_cryptohash_free(ctx);
	hex_encode((const char *) digest, sizeof(digest), hex);
	hex[PG_SHA256_DIGEST_LENGTH * 2] = '\0';
}

/*
 * Hash the whole file into f->sha256 and check that it is UTF-8 without
 * NUL bytes.  Returns NULL, or why the file cannot be read.  Sets *size to
 * the bytes read.
 */
static char *
hash_and_verify(CsvFile *f, int64 *size)
{
	unsigned char *buf = palloc(CSV_READ_CHUNK);
	int			carry = 0;
	int64		line = 1;
	char	   *reason = NULL;
	pg_cryptohash_ctx *ctx = sha256_begin();

	*size = 0;

	for (;;)
	{
		ssize_t		n;
		int			len;
		int			valid;

		do
		{
			n = read(f->fd, buf + carry, CSV_READ_CHUNK - carry);
		} while (n < 0 && errno == EINTR);
		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", f->name)));
		if (n == 0)
			break;
		sha256_add(ctx, buf + carry, n);
		*size += n;
		len = carry + n;
		carry = 0;
		if (reason == NULL)
		{
			valid = pg_encoding_verifymbstr(PG_UTF8, (const char *) buf, len);
			if (valid < len)
				carry = incomplete_utf8_tail(buf + valid, len - valid);
			for (const unsigned char *p = buf; (p = memchr(p, '\n', buf + valid - p)) != NULL; p++)
				line++;
			if (valid < len && carry == 0)
				reason = buf[valid] == '\0' ?
					psprintf("the file is not a text file: a NUL byte on line %lld", (long long) line) :
					psprintf("the file is not UTF-8: invalid byte sequence on line %lld", (long long) line);
			else if (carry > 0)
				memmove(buf, buf + valid, carry);
		}
		CHECK_FOR_INTERRUPTS();
	}
	if (carry > 0 && reason == NULL)
		reason = psprintf("the file is not UTF-8: incomplete byte sequence at the end (line %lld)",
						  (long long) line);

	sha256_end(ctx, f->sha256);
	pfree(buf);
	return reason;
}

/* ---------------------------------------------------------------------
 * The ledger: kappa.csv_files
 * ---------------------------------------------------------------------
 */

typedef enum CsvLedgerAction
{
	CSV_LEDGER_READ,			/* read the file and send its rows */
	CSV_LEDGER_DONE,			/* nothing more to do with it */
	CSV_LEDGER_GIVE_UP			/* too many attempts: to failed/ */
} CsvLedgerAction;

/*
 * Decide what to do with a file whose content is known, recording the
 * decision.  Moves a file that needs nothing else.
 */
/*
 * The move recorded in ledger row id is done.  Until then, finding the
 * file in the inbox means a crash came between the commit and the move,
 * and the move is finished; after, it means someone put the file back
 * (to try a failed file again, or a processed one after processed/ was
 * emptied), and it is dealt with as a new arrival.
 */
static void
mark_moved(int64 id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};

	begin_transaction();
	ledger_execute("UPDATE kappa.csv_files SET moved_at = now() WHERE id = $1",
				   1, types, values, NULL, SPI_OK_UPDATE);
	commit_transaction();
}

/*
 * Move the file as ledger row id recorded, and record that it was moved;
 * false (nothing moved) if its name is no longer the file that was read.
 */
static bool
move_recorded(CsvFile *f, int64 id, int subfd, const char *sub, const char *dest,
			  const char *recorded_as)
{
	CsvMove		moved = move_file(f, subfd, sub, dest);
	int			move_errno = errno;

	if (moved == CSV_MOVE_FAILED)
	{
		/*
		 * Not an error that ends the worker: its next run would find the
		 * file again, fail again, and never reach the files after it (an
		 * inbox with the sticky bit and files of other owners, processed/
		 * made read-only, another file system).  The ledger keeps where it
		 * goes; the name waits until it changes or the worker is reloaded
		 * or restarted, and the other files go on.
		 */
		report_problem("could not move \"%s\" to %s/%s: %s; it is recorded as %s and is moved after the next reload or restart of the worker",
					   f->name, sub, dest, strerror(move_errno), recorded_as);
		mark_unreadable(f->name);
		return false;
	}
	if (moved != CSV_MOVED)
	{
		file_replaced(f, recorded_as, moved == CSV_MOVE_GONE);
		return false;
	}
	mark_moved(id);
	return true;
}

static CsvLedgerAction
ledger_begin(CsvFile *f, int64 size)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			types[3] = {TEXTOID, TEXTOID, INT8OID};
	Datum		values[3];
	Oid			rtypes[6];
	Datum		rvalues[6];
	char	   *moved_to = NULL;
	char	   *state = NULL;
	char	   *error = NULL;
	int64		moved_id = 0;
	int64		processed_id = 0;

	values[0] = CStringGetTextDatum(f->name);
	values[1] = CStringGetTextDatum(f->sha256);
	values[2] = Int64GetDatum(size);

	begin_transaction();

	/* 1. this very file was dealt with, but the move did not happen */
	if (ledger_execute("SELECT state, moved_to, error, id FROM kappa.csv_files "
					   "WHERE name = $1 AND sha256 = $2 AND moved_to IS NOT NULL "
					   "AND moved_at IS NULL "
					   "AND state IN ('processed', 'duplicate', 'failed') "
					   "ORDER BY id DESC LIMIT 1",
					   2, types, values, NULL, SPI_OK_SELECT) > 0)
	{
		state = spi_text(0, 1, cxt);
		moved_to = spi_text(0, 2, cxt);
		error = spi_text(0, 3, cxt);
		moved_id = spi_int64(0, 4);
	}
	if (moved_to != NULL)
	{
		struct stat st;
		int			subfd;
		const char *sub;
		const char *dest;

		if (split_destination(f->processed_fd, f->failed_fd, moved_to, &subfd, &sub, &dest) &&
			fstatat(subfd, dest, &st, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT)
		{
			commit_transaction();
			if (strcmp(state, "failed") == 0)
				write_reason_file(subfd, dest, error ? error : "failed");
			if (move_recorded(f, moved_id, subfd, sub, dest, state))
				ereport(LOG,
						(errmsg("pg_kappa csv inbox: moved \"%s\" to %s, as recorded before a restart",
								f->name, moved_to)));
			return CSV_LEDGER_DONE;
		}
	}

	/* 2. the same content was processed before, under any name */
	if (ledger_execute("SELECT id FROM kappa.csv_files WHERE sha256 = $2 AND state = 'processed'",
					   2, types, values, NULL, SPI_OK_SELECT) > 0)
		processed_id = spi_int64(0, 1);
	if (processed_id != 0)
	{
		char	   *dest = MemoryContextStrdup(cxt, choose_destination(f->processed_fd, f->name, 0));
		Oid			dtypes[5] = {TEXTOID, TEXTOID, INT8OID, INT8OID, TEXTOID};
		Datum		dvalues[5];

		dvalues[0] = values[0];
		dvalues[1] = values[1];
		dvalues[2] = values[2];
		dvalues[3] = Int64GetDatum(processed_id);
		dvalues[4] = CStringGetTextDatum(psprintf("processed/%s", dest));
		/* a started attempt of the same file becomes the duplicate */
		if (ledger_execute("UPDATE kappa.csv_files SET state = 'duplicate', duplicate_of = $4, "
						   "size = $3, finished_at = now(), moved_to = $5 "
						   "WHERE id = (SELECT max(id) FROM kappa.csv_files "
						   "             WHERE name = $1 AND sha256 = $2 AND state = 'processing') "
						   "RETURNING id",
						   5, dtypes, dvalues, NULL, SPI_OK_UPDATE_RETURNING) == 0)
			ledger_execute("INSERT INTO kappa.csv_files "
						   "(name, sha256, size, state, duplicate_of, finished_at, moved_to) "
						   "VALUES ($1, $2, $3, 'duplicate', $4, now(), $5) RETURNING id",
						   5, dtypes, dvalues, NULL, SPI_OK_INSERT_RETURNING);
		moved_id = spi_int64(0, 1);
		commit_transaction();
		pg_atomic_fetch_add_u64(&worker.stats->files_seen, 1);
		if (!move_recorded(f, moved_id, f->processed_fd, "processed", dest, "a duplicate"))
			return CSV_LEDGER_DONE;
		ereport(LOG,
				(errmsg("pg_kappa csv inbox: \"%s\" has the content of a file already processed; moved to processed/%s without sending it again",
						f->name, dest),
				 errdetail("SHA-256 %s, kappa.csv_files id %lld.", f->sha256,
						   (long long) processed_id)));
		return CSV_LEDGER_DONE;
	}

	/* 3. a new attempt: resume the file's row, or start one */
	ledger_execute("UPDATE kappa.csv_files SET state = 'abandoned', finished_at = now(), "
				   "error = 'replaced by another file of the same name before it was processed' "
				   "WHERE name = $1 AND sha256 <> $2 AND state = 'processing'",
				   2, types, values, NULL, SPI_OK_UPDATE);
	rtypes[0] = TEXTOID;
	rtypes[1] = TEXTOID;
	rtypes[2] = INT8OID;
	rtypes[3] = TIMESTAMPTZOID;
	rtypes[4] = BOOLOID;
	rtypes[5] = INT8OID;
	memcpy(rvalues, values, sizeof(values));
	rvalues[3] = TimestampTzGetDatum(worker.started_at);
	rvalues[4] = BoolGetDatum(worker.resume_counts_all);
	rvalues[5] = Int64GetDatum(worker.resume_blamed_id);

	/*
	 * An attempt started by an earlier run of the worker counts again only
	 * if that run's end may have been the file's doing (see
	 * read_exit_record): a stop, or another file's error, is not.
	 */
	if (ledger_execute("UPDATE kappa.csv_files SET attempts = attempts + "
					   "       CASE WHEN started_at >= $4 OR $5 OR id = $6 THEN 1 ELSE 0 END, "
					   "       started_at = now(), size = $3 "
					   "WHERE name = $1 AND sha256 = $2 AND state = 'processing' "
					   "RETURNING id, attempts",
					   6, rtypes, rvalues, NULL, SPI_OK_UPDATE_RETURNING) == 0)
		ledger_execute("INSERT INTO kappa.csv_files (name, sha256, size, state) "
					   "VALUES ($1, $2, $3, 'processing') RETURNING id, attempts",
					   3, types, values, NULL, SPI_OK_INSERT_RETURNING);
	f->ledger_id = spi_int64(0, 1);
	f->attempts = (int) spi_int64(0, 2);
	commit_transaction();
	work_on(f);

	return f->attempts > CSV_MAX_ATTEMPTS ? CSV_LEDGER_GIVE_UP : CSV_LEDGER_READ;
}

/*
 * The file goes to failed/ with its reason: recorded, then the reason file
 * written, then the move.
 */
static void
fail_file(CsvFile *f, const char *reason)
{
	char	   *dest = choose_destination(f->failed_fd, f->name, (int) strlen(".reason"));
	Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		message[512];

	values[0] = Int64GetDatum(f->ledger_id);
	values[1] = CStringGetTextDatum(reason);
	values[2] = CStringGetTextDatum(psprintf("failed/%s", dest));
	begin_transaction();
	ledger_execute("UPDATE kappa.csv_files SET state = 'failed', error = $2, "
				   "finished_at = now(), moved_to = $3 WHERE id = $1",
				   3, types, values, NULL, SPI_OK_UPDATE);
	commit_transaction();

	write_reason_file(f->failed_fd, dest, reason);
	snprintf(message, sizeof(message), "%s: %s", f->name, reason);
	pg_atomic_fetch_add_u64(&worker.stats->files_seen, 1);
	source_stats_error(worker.stats, message);
	if (!move_recorded(f, f->ledger_id, f->failed_fd, "failed", dest, "failed"))
		return;
	ereport(LOG,
			(errmsg("pg_kappa csv inbox: moved \"%s\" to failed/%s: %s", f->name, dest, reason)));
}

/*
 * Kafka has acknowledged every row: in one transaction, the file is
 * processed and its dead letters are stored; then it is moved.
 */
static void
finish_file(CsvFile *f)
{
	char	   *dest = choose_destination(f->processed_fd, f->name, 0);
	Oid			types[4] = {INT8OID, INT8OID, INT8OID, TEXTOID};
	Datum		values[4];
	StringInfoData raw;
	StringInfoData reason;
	MemoryContext letter_cxt;

	values[0] = Int64GetDatum(f->ledger_id);
	values[1] = Int64GetDatum(f->rows_sent);
	values[2] = Int64GetDatum(f->rows_rejected);
	values[3] = CStringGetTextDatum(psprintf("processed/%s", dest));

	source_stats_set_state(worker.stats, "recording %s", f->name);
	begin_transaction();
	ledger_execute("UPDATE kappa.csv_files SET state = 'processed', rows_ingested = $2, "
				   "rows_rejected = $3, finished_at = now(), moved_to = $4, error = NULL "
				   "WHERE id = $1",
				   4, types, values, NULL, SPI_OK_UPDATE);

	initStringInfo(&raw);
	initStringInfo(&reason);
	letter_cxt = AllocSetContextCreate(CurrentMemoryContext, "pg_kappa csv dead letter",
									   ALLOCSET_SMALL_SIZES);
	if (BufFileSeek(f->dead_letters, 0, 0, SEEK_SET) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not rewind temporary file of dead letters: %m")));
	for (;;)
	{
		CsvDeadLetterHeader h;
		size_t		n = BufFileRead(f->dead_letters, &h, sizeof(h));

		if (n == 0)
			break;
		resetStringInfo(&raw);
		resetStringInfo(&reason);
		enlargeStringInfo(&raw, h.rawlen);
		enlargeStringInfo(&reason, h.reasonlen);
		if (n != sizeof(h) ||
			BufFileRead(f->dead_letters, raw.data, h.rawlen) != h.rawlen ||
			BufFileRead(f->dead_letters, reason.data, h.reasonlen) != h.reasonlen)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read temporary file of dead letters: %m")));
		reason.data[h.reasonlen] = '\0';
		MemoryContextSwitchTo(letter_cxt);
		kappa_dead_letter(&(KappaDeadLetter) {
			.source = "csv",
				.topic = NULL,
				.partition = -1,
				.offset = -1,
				.file = f->name,
				.line = h.line,
				.raw = raw.data,
				.rawlen = h.rawlen,
				.error = reason.data,
		});
		MemoryContextSwitchTo(MemoryContextGetParent(letter_cxt));
		MemoryContextReset(letter_cxt);
		CHECK_FOR_INTERRUPTS();
	}
	commit_transaction();

	source_stats_success(worker.stats, 1, f->rows_sent, f->rows_rejected);
	if (!move_recorded(f, f->ledger_id, f->processed_fd, "processed", dest, "processed"))
		return;
	ereport(DEBUG1,
			(errmsg("pg_kappa csv inbox: \"%s\": %lld rows sent, %lld refused; moved to processed/%s",
					f->name, (long long) f->rows_sent, (long long) f->rows_rejected, dest)));
}

/* ---------------------------------------------------------------------
 * Kafka
 * ---------------------------------------------------------------------
 */
static void
ensure_producer(void)
{
	if (worker.producer)
		return;
	worker.producer = kafka_client_create(kafka_conf_for(RD_KAFKA_PRODUCER, "csv"),
										  RD_KAFKA_PRODUCER, "csv", &worker);
}

static void
drop_producer(void)
{
	if (worker.producer == NULL)
		return;
	kafka_client_destroy(worker.producer, 0);
	worker.producer = NULL;
}

/* Serve delivery reports and client errors without waiting. */
static void
serve_kafka(void)
{
	if (worker.producer == NULL)
		return;
	kafka_client_serve(worker.producer, 0);
	if (worker.producer->error_pending)
	{
		char		msg[400];

		snprintf(msg, sizeof(msg), "kafka: %s", worker.producer->last_error_text);
		source_stats_error(worker.stats, msg);
		worker.producer->error_pending = false;
	}
}

/* ---------------------------------------------------------------------
 * Second reading: rows to Kafka
 * ---------------------------------------------------------------------
 */
static void
keep_dead_letter(CsvFile *f, const CsvRecord *rec, const char *reason)
{
	CsvDeadLetterHeader h;

	h.line = rec->line;
	h.rawlen = (uint32) rec->rawlen;
	h.reasonlen = (uint32) strlen(reason);
	BufFileWrite(f->dead_letters, &h, sizeof(h));
	BufFileWrite(f->dead_letters, (void *) rec->raw, h.rawlen);
	BufFileWrite(f->dead_letters, (void *) reason, h.reasonlen);
	f->rows_rejected++;
}

/*
 * Parse the file from its start and produce every valid row into delivery;
 * refused rows go to f->dead_letters.  Returns CSV_UNREADABLE with *reason
 * when the file has no usable header.
 */
static CsvSendResult
send_rows(CsvFile *f, KafkaDelivery *delivery, char **reason)
{
	MemoryContext cxt = CurrentMemoryContext;
	MemoryContext row_cxt;
	CsvReader  *reader;
	CsvRecord	rec;
	CsvSalesMap map;
	CsvEnvelopeSource src;
	StringInfoData key;
	StringInfoData value;
	TimestampTz last_state = 0;
	int64		rows = 0;
	int64		ts_ms = 0;

	if (lseek(f->fd, 0, SEEK_SET) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not seek in file \"%s\": %m", f->name)));
	if (f->dead_letters)
		BufFileClose(f->dead_letters);
	f->dead_letters = BufFileCreateTemp(true);
	f->rows_sent = f->rows_rejected = 0;
	memset(delivery, 0, sizeof(KafkaDelivery));

	reader = csv_reader_create(f->fd, f->name);
	if (!csv_read_record(reader, &rec))
	{
		*reason = pstrdup("the file is empty: its first row must name the columns");
		return CSV_UNREADABLE;
	}
	*reason = csv_map_header(&rec, &map);
	if (*reason)
		return CSV_UNREADABLE;

	ensure_producer();
	csv_sales_check_settings();
	csv_envelope_source(&src, f->name, f->sha256);
	initStringInfo(&key);
	initStringInfo(&value);
	row_cxt = AllocSetContextCreate(cxt, "pg_kappa csv row", ALLOCSET_SMALL_SIZES);

	while (csv_read_record(reader, &rec))
	{
		char	   *refused;

		/* when the envelope was made: to the millisecond, read now and then */
		if (rows % 64 == 0)
			ts_ms = envelope_unix_ms(GetCurrentTimestamp());
		MemoryContextSwitchTo(row_cxt);
		refused = csv_sales_envelope(&map, &rec, &src, ts_ms, &key, &value);
		MemoryContextSwitchTo(cxt);
		if (refused)
			keep_dead_letter(f, &rec, refused);
		else if (kafka_produce_or_refuse(worker.producer, kappa_sales_topic, key.data, key.len,
										 value.data, value.len, ts_ms, delivery, true))
			f->rows_sent++;
		else
		{
			/* too large for Kafka: a bad row like any other */
			char	   *why;

			MemoryContextSwitchTo(row_cxt);
			why = psprintf("its change event is %d bytes with its key, more than Kafka's message.max.bytes (%d); raise message.max.bytes in kappa.kafka_options (and the topic's max.message.bytes) to send such rows",
									  (int) (value.len + key.len),
									  kafka_max_message_bytes(worker.producer));
			MemoryContextSwitchTo(cxt);
			keep_dead_letter(f, &rec, why);
		}
		MemoryContextReset(row_cxt);

		if (++rows % CSV_SERVE_EVERY == 0)
		{
			TimestampTz now = GetCurrentTimestamp();

			CHECK_FOR_INTERRUPTS();
			serve_kafka();
			if (TimestampDifferenceExceeds(last_state, now, CSV_STATE_EVERY_MS))
			{
				source_stats_set_state(worker.stats,
									   "reading %s: line %lld, %lld rows sent, %lld acknowledged, %lld refused",
									   f->name, (long long) rec.line,
									   (long long) f->rows_sent, (long long) delivery->delivered,
									   (long long) f->rows_rejected);
				last_state = now;
			}
		}
	}
	MemoryContextDelete(row_cxt);
	csv_reader_free(reader);
	/* (a file sent again after Kafka refused it calls this again) */
	pfree(key.data);
	pfree(value.data);
	return CSV_SENT;
}

/* Wait, following reloads, until a backoff has passed. */
static void
backoff(long ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	while (GetCurrentTimestamp() < until)
	{
		wait_ms(TimestampDifferenceMilliseconds(GetCurrentTimestamp(), until));
		if (ConfigReloadPending)
			reload_configuration();
	}
}

/* Has the file changed since f->st was taken? */
static bool
file_changed(CsvFile *f)
{
	struct stat st;

	if (fstat(f->fd, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", f->name)));
	return st.st_size != f->st.st_size || stat_mtime_ns(&st) != stat_mtime_ns(&f->st);
}

/*
 * Does the file, changed in size or time since it was read, still hold what
 * was read (its size and SHA-256)?  A file only touched (a sync agent, a
 * backup restoring times, touch(1)) does: it need not be read and sent again.
 */
static bool
same_content(CsvFile *f)
{
	struct stat st;
	unsigned char *buf;
	pg_cryptohash_ctx *ctx;
	char		hex[PG_SHA256_DIGEST_LENGTH * 2 + 1];
	off_t		offset = 0;

	if (fstat(f->fd, &st) != 0 || st.st_size != f->st.st_size)
		return false;
	buf = palloc(CSV_READ_CHUNK);
	ctx = sha256_begin();
	for (;;)
	{
		ssize_t		n = pread(f->fd, buf, CSV_READ_CHUNK, offset);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", f->name)));
		if (n == 0)
			break;
		sha256_add(ctx, buf, n);
		offset += n;
		CHECK_FOR_INTERRUPTS();
	}
	sha256_end(ctx, hex);
	pfree(buf);
	return offset == f->st.st_size && strcmp(hex, f->sha256) == 0;
}

/*
 * Files whose rows are produced and whose acknowledgements are awaited,
 * oldest first.  The next file is read while Kafka acknowledges the last
 * ones, so the producer never runs dry between files; each file still has
 * its own delivery group and is recorded only when all of its rows are
 * acknowledged.
 */
static List *pending_files = NIL;

static void send_file(CsvFile *f);

static void
close_file(CsvFile *f)
{
	if (f->dead_letters)
		BufFileClose(f->dead_letters);
	if (f->fd >= 0)
		close(f->fd);
	if (f->processed_fd >= 0)
		close(f->processed_fd);
	if (f->failed_fd >= 0)
		close(f->failed_fd);
	if (f->dirfd >= 0)
		close(f->dirfd);
	MemoryContextDelete(f->cxt);
}

/* Every row acknowledged: record the file and move it. */
static void
complete_file(CsvFile *f)
{
	MemoryContext old = MemoryContextSwitchTo(f->cxt);

	work_on(f);
	if (file_changed(f) && !same_content(f))
	{
		report_problem("\"%s\" changed while it was read; it will be read again once it is stable",
					   f->name);
		forget_candidate(f->name);
	}
	else
		finish_file(f);
	worker.backoff_ms = 0;
	MemoryContextSwitchTo(old);
	close_file(f);
}

/*
 * The broker refused rows of the file for what they are (too large, an
 * invalid record), which sending it again will not change: that counts as
 * an attempt of the file, as a failure of the worker does, so that such a
 * file ends in failed/ instead of holding the inbox forever.  (The broker
 * fails every row of a record batch with the error, so the rows at fault
 * cannot be told from the others.)  Returns the attempts so far.
 */
static int
count_refusal(CsvFile *f)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	values[0] = Int64GetDatum(f->ledger_id);
	begin_transaction();
	ledger_execute("UPDATE kappa.csv_files SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts",
				   1, types, values, NULL, SPI_OK_UPDATE_RETURNING);
	f->attempts = (int) spi_int64(0, 1);
	commit_transaction();
	return f->attempts;
}

/*
 * Kafka refused rows of some files: let every pending file be reported,
 * record those that are complete, and send the others again after a
 * backoff, from their start (identical replays).
 */
static void
resend_failed_files(void)
{
	List	   *failed = NIL;
	ListCell   *lc;

	foreach(lc, pending_files)
	{
		work_on(lfirst(lc));
		(void) kafka_wait_delivered(worker.producer, &((CsvFile *) lfirst(lc))->delivery, -1);
	}
	serve_kafka();
	foreach(lc, pending_files)
	{
		CsvFile    *f = lfirst(lc);
		char		msg[400];

		work_on(f);
		if (f->delivery.failed == 0)
		{
			complete_file(f);
			continue;
		}
		if (!worker.producer->fatal && kafka_error_refuses_message(f->delivery.error) &&
			count_refusal(f) > CSV_MAX_ATTEMPTS)
		{
			fail_file(f, psprintf("Kafka refused rows of the file in %d attempts: %lld rows the last time (%s); "
								  "a row larger than the topic's max.message.bytes is refused so",
								  CSV_MAX_ATTEMPTS, (long long) f->delivery.failed,
								  rd_kafka_err2str(f->delivery.error)));
			close_file(f);
			continue;
		}
		snprintf(msg, sizeof(msg), "%s: %lld rows could not be delivered to Kafka (%s); sending the file again",
				 f->name, (long long) f->delivery.failed,
				 worker.producer->fatal ? worker.producer->last_error_text :
				 rd_kafka_err2str(f->delivery.error));
		source_stats_error(worker.stats, msg);
		ereport(LOG, (errmsg("pg_kappa csv inbox: %s", msg)));
		failed = lappend(failed, f);
	}
	list_free(pending_files);
	pending_files = NIL;

	if (worker.producer->fatal)
		drop_producer();
	worker.backoff_ms = worker.backoff_ms == 0 ? 1000 :
		Min(worker.backoff_ms * 2, CSV_MAX_BACKOFF_MS);
	if (failed != NIL)
	{
		source_stats_set_state(worker.stats, "sending %s again in %ld ms after a Kafka delivery failure",
							   ((CsvFile *) linitial(failed))->name, worker.backoff_ms);
		backoff(worker.backoff_ms);
	}
	foreach(lc, failed)
		send_file(lfirst(lc));
	list_free(failed);
}

/*
 * Record the pending files whose rows are all acknowledged, oldest first,
 * waiting as long as more than keep files are pending.
 */
static void
finish_pending_files(int keep)
{
	serve_kafka();
	while (pending_files != NIL)
	{
		CsvFile    *f = linitial(pending_files);

		if (f->delivery.pending > 0)
		{
			if (list_length(pending_files) <= keep)
				return;
			work_on(f);
			source_stats_set_state(worker.stats, "waiting for Kafka to acknowledge %s: %lld of %lld rows",
								   f->name, (long long) f->delivery.delivered,
								   (long long) f->rows_sent);
			(void) kafka_wait_delivered(worker.producer, &f->delivery, -1);
			serve_kafka();
		}
		if (f->delivery.failed > 0 || worker.producer->fatal)
		{
			resend_failed_files();
			continue;
		}
		pending_files = list_delete_first(pending_files);
		complete_file(f);
	}
}

/* Produce the file's rows; it joins the pending files. */
static void
send_file(CsvFile *f)
{
	MemoryContext old = MemoryContextSwitchTo(f->cxt);
	char	   *reason = NULL;

	work_on(f);
	/* every send of a file reads it under the date order set at its start */
	if (strcmp(GetConfigOption("DateStyle", false, false), csv_date_styles[f->date_order]) != 0)
		SetConfigOption("DateStyle", csv_date_styles[f->date_order], PGC_SUSET, PGC_S_OVERRIDE);

	if (send_rows(f, &f->delivery, &reason) == CSV_UNREADABLE)
	{
		fail_file(f, reason);
		MemoryContextSwitchTo(old);
		close_file(f);
		return;
	}
	MemoryContextSwitchTo(old);
	pending_files = lappend(pending_files, f);
}

/*
 * A file of the inbox, from opening it to sending its rows (or moving it
 * at once).  Allocates the file's state in a context of its own under cxt.
 */
static void
start_file(const char *name, MemoryContext cxt)
{
	CsvFile    *f;
	MemoryContext old;
	int64		size;
	char	   *reason;
	ListCell   *lc;
	bool		read = false;
	CsvCandidate *candidate;

	f = MemoryContextAllocZero(cxt, sizeof(CsvFile));
	f->date_order = kappa_csv_date_order;
	f->cxt = AllocSetContextCreate(cxt, "pg_kappa csv file", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(f->cxt);
	f->name = pstrdup(name);
	f->dirfd = f->processed_fd = f->failed_fd = f->fd = -1;

	f->dirfd = open(kappa_csv_inbox, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (f->dirfd < 0)
	{
		report_problem("could not open inbox directory \"%s\": %m", kappa_csv_inbox);
		goto done;
	}
	f->fd = openat(f->dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (f->fd < 0)
	{
		if (errno != ENOENT && errno != ELOOP)
		{
			report_problem("could not open file \"%s\" of the inbox: %m", name);
			mark_unreadable(name);
		}
		goto done;
	}
	/* what was opened is what the scan saw: a plain file, here */
	if (fstat(f->fd, &f->st) != 0 || !S_ISREG(f->st.st_mode) || f->st.st_nlink != 1)
		goto done;

	/*
	 * And as the scan that found it stable saw it: the list of ready files
	 * can be minutes old (the files before it waiting for Kafka), and a file
	 * written again in place since is not stable.
	 */
	candidate = hash_search(worker.candidates, name, HASH_FIND, NULL);
	if (candidate == NULL || candidate->size != f->st.st_size ||
		candidate->mtime_ns != stat_mtime_ns(&f->st))
	{
		forget_candidate(name);
		goto done;
	}
	f->processed_fd = open_subdir(f->dirfd, "processed");
	f->failed_fd = open_subdir(f->dirfd, "failed");

	/*
	 * Settings that cannot make a producer (a secrets file others can read,
	 * options librdkafka refuses) fail the worker here, before the file is
	 * read and before the ledger counts an attempt of it: they are not the
	 * file's fault, and would otherwise send every file of the inbox to
	 * failed/ unread.
	 */
	ensure_producer();

	source_stats_set_state(worker.stats, "checking %s", name);
	reason = hash_and_verify(f, &size);
	if (size != f->st.st_size || file_changed(f))
	{
		report_problem("\"%s\" changed while it was read; it will be read again once it is stable",
					   name);
		forget_candidate(name);
		goto done;
	}

	/* the same content in flight: let it be recorded first */
	foreach(lc, pending_files)
	{
		if (strcmp(((CsvFile *) lfirst(lc))->sha256, f->sha256) == 0)
		{
			finish_pending_files(0);
			break;
		}
	}

	switch (ledger_begin(f, size))
	{
		case CSV_LEDGER_DONE:
			break;
		case CSV_LEDGER_GIVE_UP:
			{
				char		last_error[512];

				SpinLockAcquire(&worker.stats->mutex);
				strlcpy(last_error, worker.stats->last_error, sizeof(last_error));
				SpinLockRelease(&worker.stats->mutex);
				fail_file(f, psprintf("gave up after %d attempts; the last error was: %s",
									  f->attempts - 1, last_error[0] ? last_error : "unknown"));
			}
			break;
		case CSV_LEDGER_READ:
			if (reason)
				fail_file(f, reason);
			else
				read = true;
			break;
	}

done:
	MemoryContextSwitchTo(old);
	if (read)
		send_file(f);
	else
		close_file(f);
}

/* ---------------------------------------------------------------------
 * Main loop
 * ---------------------------------------------------------------------
 */
static void
reset_candidates(void)
{
	HASHCTL		ctl;

	if (worker.candidates)
		hash_destroy(worker.candidates);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = NAME_MAX + 1;
	ctl.entrysize = sizeof(CsvCandidate);
	ctl.hcxt = TopMemoryContext;
	worker.candidates = hash_create("pg_kappa csv inbox files", 256, &ctl,
									HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

static void
reload_configuration(void)
{
	char	   *old_brokers = pstrdup(kappa_brokers);
	char	   *old_options = pstrdup(kappa_kafka_options);
	char	   *old_inbox = pstrdup(kappa_csv_inbox);

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);

	if (strcmp(old_brokers, kappa_brokers) != 0 ||
		strcmp(old_options, kappa_kafka_options) != 0 ||
		kafka_client_settings_changed(worker.producer))
	{
		/* between files nothing is in flight; within one, it is re-sent */
		ereport(LOG, (errmsg("pg_kappa csv inbox: Kafka settings changed, reconnecting")));
		if (worker.producer && rd_kafka_outq_len(worker.producer->rk) == 0)
			drop_producer();
	}
	if (strcmp(old_inbox, kappa_csv_inbox) != 0)
	{
		reset_candidates();
		worker.moves_checked = false;
		worker.problem[0] = '\0';
	}
	else if (worker.candidates)
		retry_unreadable();
	pfree(old_brokers);
	pfree(old_options);
	pfree(old_inbox);
}

/* ---------------------------------------------------------------------
 * How the previous run ended
 *
 * A file that makes the worker fail every time must end in failed/, so a
 * resumed attempt counts (CSV_MAX_ATTEMPTS); but a stop (SIGTERM: a server
 * restart, pg_terminate_backend) or another file's error is not the file's
 * doing, and counting those sent good files to failed/ unread.  So each run
 * leaves a record in the data directory as it exits: "clean" after a stop,
 * "failed <ledger id>" after an ERROR (0: no file was being worked on).  No
 * record (a crash, an immediate shutdown, a FATAL of another cause, a
 * record that cannot be read) counts every resumed file, as before.
 * ---------------------------------------------------------------------
 */
#define CSV_EXIT_RECORD		"pg_kappa_csv.exit"

static void
csv_sigterm(SIGNAL_ARGS)
{
	csv_terminating = true;
	die(postgres_signal_arg);
}

static void
read_exit_record(void)
{
	char		buf[64];
	ssize_t		len = 0;
	int			fd = open(CSV_EXIT_RECORD, O_RDONLY | PG_BINARY, 0);
	long long	id;

	worker.started_at = GetCurrentTimestamp();
	worker.resume_counts_all = true;
	worker.resume_blamed_id = 0;
	if (fd < 0)
		return;
	len = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (unlink(CSV_EXIT_RECORD) != 0)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", CSV_EXIT_RECORD)));
	if (len <= 0)
		return;
	buf[len] = '\0';
	if (strcmp(buf, "clean\n") == 0)
		worker.resume_counts_all = false;
	else if (sscanf(buf, "failed %lld\n", &id) == 1 && id >= 0)
	{
		worker.resume_counts_all = false;
		worker.resume_blamed_id = (int64) id;
	}
}

/* (at exit: plain system calls, nothing that could raise an error) */
static void
write_exit_record(void)
{
	char		buf[64];
	int			len;
	int			fd;
	bool		ok;

	if (worker.failed)
		len = snprintf(buf, sizeof(buf), "failed %lld\n", (long long) worker.current_id);
	else if (csv_terminating)
		len = snprintf(buf, sizeof(buf), "clean\n");
	else
		return;
	fd = open(CSV_EXIT_RECORD ".tmp", O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, 0600);
	if (fd < 0)
		return;
	ok = write(fd, buf, len) == len;
	ok = close(fd) == 0 && ok;
	if (!ok || rename(CSV_EXIT_RECORD ".tmp", CSV_EXIT_RECORD) != 0)
		(void) unlink(CSV_EXIT_RECORD ".tmp");
}

static void
csv_worker_shutdown(int code, Datum arg)
{
	write_exit_record();
	if (worker.stats)
	{
		SpinLockAcquire(&worker.stats->mutex);
		strlcpy(worker.stats->state, "stopped", sizeof(worker.stats->state));
		worker.stats->pid = 0;
		SpinLockRelease(&worker.stats->mutex);
	}
	if (worker.producer)
	{
		kafka_client_destroy(worker.producer, 0);
		worker.producer = NULL;
	}
}

void
kappa_csv_worker_main(Datum main_arg)
{
	MemoryContext loop_cxt;

	kappa_worker_begin("pg_kappa csv inbox");

	/*
	 * A file is moved right after the commit that records it: that commit
	 * must be on disk first, whatever synchronous_commit the server or the
	 * database has, or a crash could leave a moved file whose ledger row
	 * and dead letters were lost.
	 */
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);

	memset(&worker, 0, sizeof(worker));
	pqsignal(SIGTERM, csv_sigterm);
	read_exit_record();
	worker.stats = source_stats_attach("csv");
	worker.owner = ResourceOwnerCreate(NULL, "pg_kappa csv inbox");
	reset_candidates();
	before_shmem_exit(csv_worker_shutdown, (Datum) 0);
	loop_cxt = AllocSetContextCreate(TopMemoryContext, "pg_kappa csv loop",
									 ALLOCSET_DEFAULT_SIZES);

	PG_TRY();
	{
		for (;;)
		{
			List	   *ready;
			ListCell   *lc;
			MemoryContext old;

			CHECK_FOR_INTERRUPTS();
			work_on(NULL);
			if (ConfigReloadPending)
				reload_configuration();
			MemoryContextReset(loop_cxt);
			old = MemoryContextSwitchTo(loop_cxt);
			serve_kafka();

			if (!kappa_csv_enabled)
			{
				source_stats_set_state(worker.stats, "disabled (kappa.csv_enabled = off)");
				MemoryContextSwitchTo(old);
				wait_ms(kappa_csv_poll_interval);
				continue;
			}
			if (kappa_csv_inbox[0] == '\0')
			{
				source_stats_set_state(worker.stats, "idle: kappa.csv_inbox is not set");
				MemoryContextSwitchTo(old);
				wait_ms(kappa_csv_poll_interval);
				continue;
			}
			if (!worker.extension_seen)
			{
				worker.extension_seen = kappa_extension_installed();
				if (!worker.extension_seen)
				{
					source_stats_set_state(worker.stats,
										   "waiting for CREATE EXTENSION pg_kappa in database \"%s\"",
										   kappa_database);
					MemoryContextSwitchTo(old);
					wait_ms(kappa_csv_poll_interval);
					continue;
				}
			}

			ready = scan_inbox();
			foreach(lc, ready)
			{
				start_file(lfirst(lc), loop_cxt);
				work_on(NULL);
				finish_pending_files(CSV_MAX_PENDING_FILES - 1);
				work_on(NULL);
				CHECK_FOR_INTERRUPTS();
				if (ConfigReloadPending)
					break;
			}
			finish_pending_files(0);
			MemoryContextSwitchTo(old);
			if (ready == NIL)
			{
				if (worker.inbox_ok)
					source_stats_set_state(worker.stats, "watching %s", kappa_csv_inbox);
				wait_ms(kappa_csv_poll_interval);
			}
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/*
		 * Keep the reason visible in kappa.stat_sources, and the file being
		 * worked on for the exit record, then exit.
		 */
		worker.failed = true;
		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		source_stats_error(worker.stats, edata->message);
		FreeErrorData(edata);
		PG_RE_THROW();
	}
	PG_END_TRY();
}
