-- kappa.* settings: defaults, check hooks, secrecy of kappa.kafka_options.
CREATE EXTENSION pg_kappa;

SELECT name, setting, context
  FROM pg_settings
 WHERE name LIKE 'kappa.%'
 ORDER BY name;

-- kafka_options and secrets_file are superuser-only; kafka_options is not listed
SELECT count(*) AS listed FROM pg_settings WHERE name = 'kappa.kafka_options';
CREATE ROLE kappa_regress_user;
SET ROLE kappa_regress_user;
SHOW kappa.kafka_options;
SHOW kappa.secrets_file;
SHOW kappa.brokers;
RESET ROLE;

-- the prefix is reserved: typos are errors, not silent placeholders
SET kappa.brokerz = 'x';

-- check hooks reject bad values where they are set
ALTER SYSTEM SET kappa.brokers = '';
ALTER SYSTEM SET kappa.brokers = 'host1:9092,,host2:9092';
ALTER SYSTEM SET kappa.brokers = 'host1:90x2';
ALTER SYSTEM SET kappa.brokers = 'host one:9092';
ALTER SYSTEM SET kappa.sales_topic = 'sales events';
ALTER SYSTEM SET kappa.sales_topic = '..';
ALTER SYSTEM SET kappa.payments_topic = '';
ALTER SYSTEM SET kappa.cdc_slot_name = 'Bad-Name';
ALTER SYSTEM SET kappa.cdc_poll_interval = 0;
-- librdkafka itself judges kappa.kafka_options
ALTER SYSTEM SET kappa.kafka_options = 'client.rack=r1; no.such.property=1';
ALTER SYSTEM SET kappa.kafka_options = 'acks=sometimes';
ALTER SYSTEM SET kappa.kafka_options = 'bootstrap.servers=elsewhere:9092';
ALTER SYSTEM SET kappa.kafka_options = 'security.protocol';
ALTER SYSTEM SET kappa.kafka_options = 'message.max.bytes=100000000';
-- secrets are refused: PostgreSQL logs parameter values; they go in kappa.secrets_file
ALTER SYSTEM SET kappa.kafka_options = 'sasl.username=kappa; sasl.password=x';
ALTER SYSTEM SET kappa.kafka_options = 'ssl.key.password=x';
-- the secrets file is named by an absolute path, without control characters
ALTER SYSTEM SET kappa.secrets_file = 'kappa.secrets';
ALTER SYSTEM SET kappa.secrets_file = E'/etc/kappa\nLOG:  forged';
-- good values are accepted (and reset again)
ALTER SYSTEM SET kappa.secrets_file = '/etc/postgresql/15/main/kappa.secrets';
ALTER SYSTEM SET kappa.brokers = 'SSL://kafka-1.example:9093, kafka-2.example:9093,kafka-3';
ALTER SYSTEM SET kappa.kafka_options = 'security.protocol=sasl_ssl; sasl.mechanisms=SCRAM-SHA-512; sasl.username=semi\;colon';
ALTER SYSTEM SET kappa.sales_topic = 'shop.sales-events_v2';
ALTER SYSTEM RESET kappa.brokers;
ALTER SYSTEM RESET kappa.kafka_options;
ALTER SYSTEM RESET kappa.sales_topic;
ALTER SYSTEM RESET kappa.secrets_file;

DROP ROLE kappa_regress_user;
