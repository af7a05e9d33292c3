/*-------------------------------------------------------------------------
 *
 * secrets.c
 *	  Passwords and other secrets, read from the file named by
 *	  kappa.secrets_file.
 *
 * PostgreSQL writes the new value of every changed parameter to the server
 * log when it reloads its configuration, and quotes rejected values in
 * errors, so a password kept in a GUC ends up in the log.  Secrets are
 * therefore kept in a file of their own, which only the server's operating
 * system user may read (the same rule as ssl_key_file):
 *
 *	# kappa secrets
 *	kafka.sasl.password = s3cret
 *	kafka.ssl.key.password = ...
 *	soap.password = ...
 *
 * "kafka." lines are librdkafka properties; "soap." lines are the SOAP
 * poller's credentials.  Values are never logged or shown: errors name the
 * file, the line and the key only.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include <sys/stat.h>
#include <unistd.h>

#include "kafka/kafka.h"
#include "storage/fd.h"

static char *
trim(char *s)
{
	char	   *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
		end--;
	*end = '\0';
	return s;
}

/*
 * The secrets whose keys start with prefix ("kafka.", "soap."), with the
 * prefix removed, as a list of KafkaOption.  An empty kappa.secrets_file
 * gives an empty list.
 */
/*
 * Errors about the file name it in DETAIL only: the workers copy an error's
 * message into their status, which kappa_reader may read, and the path is
 * a superuser's setting.
 */
int
errdetail_secrets_file(void)
{
	return errdetail("kappa.secrets_file is \"%s\".", kappa_secrets_file);
}

List *
kappa_read_secrets(const char *prefix)
{
	List	   *result = NIL;
	struct stat st;
	FILE	   *file;
	char		line[4096];
	int			lineno = 0;
	size_t		prefixlen = strlen(prefix);

	if (kappa_secrets_file == NULL || kappa_secrets_file[0] == '\0')
		return NIL;

	if (stat(kappa_secrets_file, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not access the secrets file: %m"),
				 errdetail_secrets_file(),
				 errhint("Check kappa.secrets_file.")));
	if (!S_ISREG(st.st_mode))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("the secrets file is not a regular file"),
				 errdetail_secrets_file()));
	if (st.st_uid != geteuid() || (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("the secrets file has group or world access, or another owner"),
				 errdetail("kappa.secrets_file is \"%s\"; it must be owned by the database server's user and have permissions u=rw (0600) or less.",
						   kappa_secrets_file),
				 errhint("chown the file to the server's user and chmod 0600 it.")));

	file = AllocateFile(kappa_secrets_file, "r");
	if (file == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open the secrets file: %m"),
				 errdetail_secrets_file()));

	while (fgets(line, sizeof(line), file) != NULL)
	{
		size_t		len = strlen(line);
		char	   *p;
		char	   *eq;
		char	   *key;

		lineno++;

		/*
		 * A line longer than the buffer would be read in pieces, the next
		 * piece taken for a line of its own and quoted as its key: refuse
		 * it, quoting nothing.
		 */
		if (len == sizeof(line) - 1 && line[len - 1] != '\n' && !feof(file))
		{
			explicit_bzero(line, sizeof(line));
			FreeFile(file);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("line %d of the secrets file is longer than %d bytes",
							lineno, (int) sizeof(line) - 2),
					 errdetail_secrets_file()));
		}
		p = trim(line);
		if (*p == '\0' || *p == '#')
			continue;
		eq = strchr(p, '=');
		if (eq == NULL)
		{
			explicit_bzero(line, sizeof(line));
			FreeFile(file);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("line %d of the secrets file is not of the form key = value", lineno),
					 errdetail_secrets_file()));
		}
		*eq = '\0';
		key = trim(p);
		if (strncmp(key, "kafka.", 6) != 0 && strncmp(key, "soap.", 5) != 0)
		{
			/* quote the key only if it looks like one, not like a secret */
			bool		keylike = strspn(key, "abcdefghijklmnopqrstuvwxyz0123456789._-") == strlen(key);
			char	   *shown = keylike ? psprintf("\"%s\" ", key) : "";

			explicit_bzero(line, sizeof(line));
			FreeFile(file);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("unknown key %son line %d of the secrets file", shown, lineno),
					 errdetail_secrets_file(),
					 errhint("Keys start with \"kafka.\" (librdkafka properties) or \"soap.\".")));
		}
		if (strncmp(key, prefix, prefixlen) == 0)
		{
			KafkaOption *opt = palloc(sizeof(KafkaOption));

			opt->key = pstrdup(key + prefixlen);
			opt->value = pstrdup(trim(eq + 1));
			result = lappend(result, opt);
		}
	}
	explicit_bzero(line, sizeof(line));
	FreeFile(file);
	return result;
}
