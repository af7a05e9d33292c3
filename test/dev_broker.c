/*
 * dev-broker: a Kafka-protocol broker on 127.0.0.1 for tests and the demo.
 *
 * It wraps librdkafka's mock cluster (rdkafka_mock.h): real Kafka protocol
 * over TCP (produce, fetch, consumer groups, committed offsets, idempotent
 * producers), kept in memory.  pg_kappa itself never links it; it talks to
 * whatever kappa.brokers names, as it would to a real cluster.
 *
 *   dev-broker [--brokers N] [--topic NAME:PARTITIONS]... [--partitions N]
 *              [--bootstrap-file PATH] [--control PATH] [--exit-with-parent]
 *
 * Once the cluster listens, the bootstrap list ("127.0.0.1:port,...") is
 * printed on stdout and written to --bootstrap-file (atomically: written
 * to PATH.tmp, then renamed), so a caller can wait for the file.
 *
 * --control names a FIFO (created if missing) that takes one command a line:
 *   down ID|all        take broker ID (1..N) down: connections are closed
 *                      and refused until it comes up again
 *   up ID|all          bring it back
 *   topic NAME PARTS   create a topic
 *   produce-errors CODE COUNT
 *                      answer the next COUNT produce requests with Kafka
 *                      error CODE (10: message too large), appending
 *                      nothing (the mock never checks max.message.bytes)
 *   clear-produce-errors   forget those not used yet
 *   request-errors APIKEY CODE COUNT
 *                      the same for any request type (2: ListOffsets)
 *   clear-request-errors APIKEY
 *   topic-error NAME CODE  metadata answers Kafka error CODE for topic NAME
 *                      (3: unknown topic, as if it did not exist; 0: clear)
 *   commit-marker NAME PARTITION
 *                      append a transaction commit marker (a control
 *                      record) to the partition, as a real broker does
 *                      when a transactional producer commits: the mock's
 *                      own transactions write none, so its high watermark
 *                      never runs one past the last message
 *   leader NAME PARTITION ID
 *                      make broker ID the partition's leader
 *   produce-delay ID MS COUNT
 *                      broker ID answers its next COUNT produce requests
 *                      MS milliseconds late (it appends their records at
 *                      once): a slow leader, whose acknowledgements lag
 *   stop               exit, as on SIGTERM
 * Each command is acknowledged by a line "ok <command>" (or "error ...")
 * on stdout.
 *
 * Retention: the mock keeps about 5 MiB of record batches per partition and
 * drops the oldest beyond that; spread big tests over partitions.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static volatile sig_atomic_t stop_requested = 0;

static void
on_signal(int sig)
{
	(void) sig;
	stop_requested = 1;
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: dev-broker [--brokers N] [--topic NAME:PARTITIONS]... [--partitions N]\n"
			"                  [--bootstrap-file PATH] [--control FIFO] [--exit-with-parent]\n");
	exit(2);
}

static int
create_topic(rd_kafka_mock_cluster_t *mcluster, const char *name, int partitions,
			 int replication)
{
	rd_kafka_resp_err_t err;

	err = rd_kafka_mock_topic_create(mcluster, name, partitions, replication);
	if (err)
	{
		fprintf(stderr, "dev-broker: could not create topic %s: %s\n",
				name, rd_kafka_err2str(err));
		return -1;
	}
	return 0;
}

static int
set_brokers(rd_kafka_mock_cluster_t *mcluster, int nbrokers, const char *which,
			int up)
{
	int			first = 1,
				last = nbrokers;

	if (strcmp(which, "all") != 0)
	{
		char	   *end;
		long		id = strtol(which, &end, 10);

		if (*end != '\0' || id < 1 || id > nbrokers)
			return -1;
		first = last = (int) id;
	}
	for (int id = first; id <= last; id++)
	{
		rd_kafka_resp_err_t err = up ?
			rd_kafka_mock_broker_set_up(mcluster, id) :
			rd_kafka_mock_broker_set_down(mcluster, id);

		if (err)
			return -1;
	}
	return 0;
}

/* ---------------------------------------------------------------------
 * commit-marker: a Produce request written by hand, because no client
 * sends control records (brokers write them) and the mock has no call
 * for them.  Kafka protocol: Produce v3, one RecordBatch v2 with the
 * transactional and control attributes and one COMMIT control record.
 * ---------------------------------------------------------------------
 */
typedef struct Buf
{
	unsigned char data[512];
	size_t		len;
} Buf;

static void
put(Buf *b, const void *p, size_t n)
{
	if (b->len + n <= sizeof(b->data))
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void
put_i8(Buf *b, int v)
{
	unsigned char c = (unsigned char) v;

	put(b, &c, 1);
}

static void
put_i16(Buf *b, int v)
{
	unsigned char c[2] = {(unsigned char) (v >> 8), (unsigned char) v};

	put(b, c, 2);
}

static void
put_i32(Buf *b, long long v)
{
	for (int shift = 24; shift >= 0; shift -= 8)
		put_i8(b, (int) ((v >> shift) & 0xff));
}

static void
put_i64(Buf *b, long long v)
{
	put_i32(b, (v >> 32) & 0xffffffffLL);
	put_i32(b, v & 0xffffffffLL);
}

/* zigzag varint, as record fields are written */
static void
put_varint(Buf *b, long long v)
{
	unsigned long long u = ((unsigned long long) v << 1) ^ (unsigned long long) (v >> 63);

	while (u >= 0x80)
	{
		put_i8(b, (int) ((u & 0x7f) | 0x80));
		u >>= 7;
	}
	put_i8(b, (int) u);
}

static void
set_i32(Buf *b, size_t at, unsigned long v)
{
	for (int i = 0; i < 4; i++)
		b->data[at + i] = (unsigned char) (v >> (24 - 8 * i));
}

/* CRC-32C (Castagnoli), which RecordBatch v2 carries */
static unsigned long
crc32c(const unsigned char *p, size_t n)
{
	unsigned long crc = 0xffffffffUL;

	while (n--)
	{
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0x82f63b78UL & (0UL - (crc & 1)));
	}
	return crc ^ 0xffffffffUL;
}

static int
read_full(int fd, unsigned char *p, size_t n)
{
	while (n > 0)
	{
		ssize_t		got = read(fd, p, n);

		if (got <= 0)
			return -1;
		p += got;
		n -= (size_t) got;
	}
	return 0;
}

/* The Kafka error code of the answer, or -1 when there is none. */
static int
send_commit_marker(const char *host, int port, const char *topic, int partition)
{
	Buf			batch = {.len = 0};
	Buf			req = {.len = 0};
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t) port)};
	struct timeval tv = {.tv_sec = 5};
	struct timeval now;
	long long	ms;
	unsigned char hdr[4];
	unsigned char resp[512];
	size_t		len;
	size_t		at;
	int			fd;
	int			err = -1;

	gettimeofday(&now, NULL);
	ms = (long long) now.tv_sec * 1000 + now.tv_usec / 1000;

	/* RecordBatch v2 */
	put_i64(&batch, 0);			/* baseOffset: the broker assigns it */
	put_i32(&batch, 0);			/* batchLength, set below */
	put_i32(&batch, -1);		/* partitionLeaderEpoch */
	put_i8(&batch, 2);			/* magic */
	put_i32(&batch, 0);			/* crc, set below */
	put_i16(&batch, 0x30);		/* attributes: transactional, control */
	put_i32(&batch, 0);			/* lastOffsetDelta */
	put_i64(&batch, ms);		/* baseTimestamp */
	put_i64(&batch, ms);		/* maxTimestamp */
	put_i64(&batch, 4242);		/* producerId */
	put_i16(&batch, 0);			/* producerEpoch */
	put_i32(&batch, -1);		/* baseSequence */
	put_i32(&batch, 1);			/* one record */
	/* the record: 16 bytes after its length */
	put_varint(&batch, 16);
	put_i8(&batch, 0);			/* attributes */
	put_varint(&batch, 0);		/* timestampDelta */
	put_varint(&batch, 0);		/* offsetDelta */
	put_varint(&batch, 4);		/* key: version 0, type 1 (COMMIT) */
	put_i16(&batch, 0);
	put_i16(&batch, 1);
	put_varint(&batch, 6);		/* value: version 0, coordinator epoch 0 */
	put_i16(&batch, 0);
	put_i32(&batch, 0);
	put_varint(&batch, 0);		/* no headers */
	set_i32(&batch, 8, (unsigned long) (batch.len - 12));
	set_i32(&batch, 17, crc32c(batch.data + 21, batch.len - 21));

	/* Produce v3 */
	put_i32(&req, 0);			/* size, set below */
	put_i16(&req, 0);			/* ApiKey Produce */
	put_i16(&req, 3);			/* ApiVersion */
	put_i32(&req, 1);			/* CorrelationId */
	put_i16(&req, 10);
	put(&req, "dev-broker", 10);
	put_i16(&req, -1);			/* TransactionalId: null */
	put_i16(&req, -1);			/* acks: all */
	put_i32(&req, 5000);		/* timeout */
	put_i32(&req, 1);
	put_i16(&req, (int) strlen(topic));
	put(&req, topic, strlen(topic));
	put_i32(&req, 1);
	put_i32(&req, partition);
	put_i32(&req, (long long) batch.len);
	put(&req, batch.data, batch.len);
	if (req.len > sizeof(req.data))
		return -1;
	set_i32(&req, 0, (unsigned long) (req.len - 4));

	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1 ||
		(fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *) &addr, sizeof(addr)) == 0 &&
		write(fd, req.data, req.len) == (ssize_t) req.len &&
		read_full(fd, hdr, 4) == 0 &&
		(len = ((size_t) hdr[0] << 24) | ((size_t) hdr[1] << 16) | ((size_t) hdr[2] << 8) | hdr[3]) <= sizeof(resp) &&
		read_full(fd, resp, len) == 0)
	{
		/* CorrelationId, #topics, topic name, #partitions, partition */
		at = 4 + 4;
		if (at + 2 <= len)
			at += 2 + (((size_t) resp[at] << 8) | resp[at + 1]);
		at += 4 + 4;
		if (at + 2 <= len)
			err = (int) (short) ((resp[at] << 8) | resp[at + 1]);
	}
	close(fd);
	return err;
}

/* Send the marker to each broker in turn until the partition's leader takes it. */
static int
commit_marker(const char *bootstraps, const char *topic, const char *partition)
{
	char	   *list = strdup(bootstraps);
	char	   *save = NULL;
	int			rc = -1;

	for (char *b = strtok_r(list, ",", &save); b && rc != 0; b = strtok_r(NULL, ",", &save))
	{
		char	   *colon = strrchr(b, ':');

		if (colon == NULL)
			continue;
		*colon = '\0';
		if (send_commit_marker(b, atoi(colon + 1), topic, atoi(partition)) == 0)
			rc = 0;
	}
	free(list);
	return rc;
}

/* The next count requests of type apikey are answered with error code. */
static int
push_request_errors(rd_kafka_mock_cluster_t *mcluster, int apikey, int code, int count)
{
	if (apikey < 0 || code <= 0 || count <= 0)
		return -1;
	while (count-- > 0)
		rd_kafka_mock_push_request_errors(mcluster, (int16_t) apikey, 1, (rd_kafka_resp_err_t) code);
	return 0;
}

static void
run_command(rd_kafka_mock_cluster_t *mcluster, int nbrokers, char *line,
			int default_replication)
{
	char		verb[32] = "",
				arg1[256] = "",
				arg2[32] = "",
				arg3[32] = "";
	int			n = sscanf(line, "%31s %255s %31s %31s", verb, arg1, arg2, arg3);
	int			ok = -1;

	if (n >= 2 && strcmp(verb, "down") == 0)
		ok = set_brokers(mcluster, nbrokers, arg1, 0);
	else if (n >= 2 && strcmp(verb, "up") == 0)
		ok = set_brokers(mcluster, nbrokers, arg1, 1);
	else if (n == 3 && strcmp(verb, "topic") == 0)
		ok = create_topic(mcluster, arg1, atoi(arg2), default_replication);
	else if (n == 3 && strcmp(verb, "produce-errors") == 0)
		ok = push_request_errors(mcluster, 0, atoi(arg1), atoi(arg2));	/* 0: Produce */
	else if (n == 3 && strcmp(verb, "topic-error") == 0 && atoi(arg2) >= 0)
	{
		/* metadata answers this error for the topic (0: none again) */
		rd_kafka_mock_topic_set_error(mcluster, arg1, (rd_kafka_resp_err_t) atoi(arg2));
		ok = 0;
	}
	else if (n == 3 && strcmp(verb, "commit-marker") == 0)
		ok = commit_marker(rd_kafka_mock_cluster_bootstraps(mcluster), arg1, arg2);
	else if (n == 4 && strcmp(verb, "request-errors") == 0)
		ok = push_request_errors(mcluster, atoi(arg1), atoi(arg2), atoi(arg3));
	else if (n == 2 && strcmp(verb, "clear-request-errors") == 0 && atoi(arg1) >= 0)
	{
		rd_kafka_mock_clear_request_errors(mcluster, atoi(arg1));
		ok = 0;
	}
	else if (n == 1 && strcmp(verb, "clear-produce-errors") == 0)
	{
		rd_kafka_mock_clear_request_errors(mcluster, 0);
		ok = 0;
	}
	else if (n == 4 && strcmp(verb, "leader") == 0 && atoi(arg3) >= 1 && atoi(arg3) <= nbrokers)
	{
		/* leader TOPIC PARTITION BROKER: move a partition's leadership */
		ok = rd_kafka_mock_partition_set_leader(mcluster, arg1, atoi(arg2), atoi(arg3)) ? -1 : 0;
	}
	else if (n == 4 && strcmp(verb, "produce-delay") == 0 && atoi(arg1) >= 1 &&
			 atoi(arg1) <= nbrokers && atoi(arg2) >= 0 && atoi(arg3) > 0)
	{
		/* the records are appended at once, only the answers are late */
		ok = 0;
		for (int i = 0; i < atoi(arg3) && ok == 0; i++)
			if (rd_kafka_mock_broker_push_request_error_rtts(mcluster, atoi(arg1), 0, 1,
															 RD_KAFKA_RESP_ERR_NO_ERROR,
															 atoi(arg2)))
				ok = -1;
	}
	else if (n >= 1 && strcmp(verb, "stop") == 0)
	{
		stop_requested = 1;
		ok = 0;
	}
	printf("%s %s\n", ok == 0 ? "ok" : "error", line);
	fflush(stdout);
}

int
main(int argc, char **argv)
{
	static const struct option options[] = {
		{"brokers", required_argument, NULL, 'b'},
		{"topic", required_argument, NULL, 't'},
		{"partitions", required_argument, NULL, 'p'},
		{"bootstrap-file", required_argument, NULL, 'f'},
		{"control", required_argument, NULL, 'c'},
		{"exit-with-parent", no_argument, NULL, 'x'},
		{NULL, 0, NULL, 0}
	};
	int			nbrokers = 1;
	int			default_partitions = 4;
	const char *bootstrap_file = NULL;
	const char *control = NULL;
	char	  **topics = calloc(argc, sizeof(char *));
	int			ntopics = 0;
	int			opt;
	char		errstr[512];
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	rd_kafka_mock_cluster_t *mcluster;
	const char *bootstraps;
	int			control_fd = -1;
	char		linebuf[1024];
	size_t		linelen = 0;
	int			replication;

	while ((opt = getopt_long(argc, argv, "b:t:p:f:c:x", options, NULL)) != -1)
	{
		switch (opt)
		{
			case 'b':
				nbrokers = atoi(optarg);
				break;
			case 't':
				topics[ntopics++] = optarg;
				break;
			case 'p':
				default_partitions = atoi(optarg);
				break;
			case 'f':
				bootstrap_file = optarg;
				break;
			case 'c':
				control = optarg;
				break;
			case 'x':
				prctl(PR_SET_PDEATHSIG, SIGTERM);
				if (getppid() == 1)
					return 0;
				break;
			default:
				usage();
		}
	}
	if (optind != argc || nbrokers < 1 || nbrokers > 16 || default_partitions < 1)
		usage();
	replication = nbrokers >= 3 ? 3 : nbrokers;

	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGPIPE, SIG_IGN);

	/* The mock cluster runs on the background thread of a client instance. */
	conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		fprintf(stderr, "dev-broker: %s\n", errstr);
		return 1;
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "dev-broker: %s\n", errstr);
		return 1;
	}
	mcluster = rd_kafka_mock_cluster_new(rk, nbrokers);
	if (mcluster == NULL)
	{
		fprintf(stderr, "dev-broker: could not create the mock cluster\n");
		return 1;
	}

	for (int i = 0; i < ntopics; i++)
	{
		char	   *colon = strrchr(topics[i], ':');
		int			partitions = default_partitions;

		if (colon)
		{
			*colon = '\0';
			partitions = atoi(colon + 1);
		}
		if (partitions < 1 || create_topic(mcluster, topics[i], partitions, replication) != 0)
			return 1;
	}

	if (control)
	{
		if (mkfifo(control, 0600) != 0 && errno != EEXIST)
		{
			fprintf(stderr, "dev-broker: could not create FIFO %s: %s\n", control, strerror(errno));
			return 1;
		}
		/* read-write, so the FIFO never reports end-of-file between writers */
		control_fd = open(control, O_RDWR | O_NONBLOCK);
		if (control_fd < 0)
		{
			fprintf(stderr, "dev-broker: could not open FIFO %s: %s\n", control, strerror(errno));
			return 1;
		}
	}

	bootstraps = rd_kafka_mock_cluster_bootstraps(mcluster);
	if (bootstrap_file)
	{
		char		tmp[4096];
		FILE	   *f;

		snprintf(tmp, sizeof(tmp), "%s.tmp", bootstrap_file);
		f = fopen(tmp, "w");
		if (f == NULL || fprintf(f, "%s\n", bootstraps) < 0 || fclose(f) != 0 ||
			rename(tmp, bootstrap_file) != 0)
		{
			fprintf(stderr, "dev-broker: could not write %s: %s\n", bootstrap_file, strerror(errno));
			return 1;
		}
	}
	printf("%s\n", bootstraps);
	fflush(stdout);

	while (!stop_requested)
	{
		struct pollfd pfd = {.fd = control_fd, .events = POLLIN};
		int			rc = poll(&pfd, control_fd >= 0 ? 1 : 0, 200);

		if (rc > 0 && (pfd.revents & POLLIN))
		{
			ssize_t		got = read(control_fd, linebuf + linelen, sizeof(linebuf) - 1 - linelen);

			if (got > 0)
			{
				char	   *nl;

				linelen += got;
				linebuf[linelen] = '\0';
				while ((nl = strchr(linebuf, '\n')) != NULL)
				{
					*nl = '\0';
					if (nl > linebuf)
						run_command(mcluster, nbrokers, linebuf, replication);
					memmove(linebuf, nl + 1, linelen - (nl + 1 - linebuf) + 1);
					linelen -= nl + 1 - linebuf;
				}
				if (linelen == sizeof(linebuf) - 1)
					linelen = 0;	/* an absurdly long line: drop it */
			}
		}
	}

	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(rk);
	if (bootstrap_file)
		unlink(bootstrap_file);
	if (control_fd >= 0)
	{
		close(control_fd);
		unlink(control);
	}
	return 0;
}
