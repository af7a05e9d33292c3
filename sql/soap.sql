-- The SOAP payment poller without a network: its settings, and what it
-- makes of responses (kappa.soap_decode runs the poller's parser and
-- checks): the shop's fixtures, faults, hostile and malformed XML, bad
-- confirmations.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_kappa;	-- (also when run on its own)
RESET client_min_messages;
\getenv abs_srcdir PG_ABS_SRCDIR
\set fixtures :abs_srcdir '/test/fixtures/'
\set page1 :fixtures 'soap_response_page1.xml'
\set page2 :fixtures 'soap_response_page2.xml'
\set fault :fixtures 'soap_fault.xml'

-- ts_ms is the wall clock
CREATE FUNCTION pg_temp.stable(v text) RETURNS text LANGUAGE sql AS $$
  SELECT regexp_replace(v, '"ts_ms":[0-9]{13}}$', '"ts_ms":MS}')
$$;

-- settings: defaults, superuser-only ones, check hooks
SELECT name, setting, unit, context
  FROM pg_settings
 WHERE name LIKE 'kappa.soap%'
 ORDER BY name;
CREATE ROLE kappa_soap_user;
SET ROLE kappa_soap_user;
SHOW kappa.soap_url;
SHOW kappa.soap_username;
SHOW kappa.soap_ca_file;
SHOW kappa.soap_poll_interval;
SELECT * FROM kappa.soap_decode('<x/>');
SELECT * FROM kappa.soap_state;
RESET ROLE;
DROP ROLE kappa_soap_user;

ALTER SYSTEM SET kappa.soap_url = 'ftp://payments.example/ws';
ALTER SYSTEM SET kappa.soap_url = 'payments.example/ws';
ALTER SYSTEM SET kappa.soap_url = 'https://kappa:secret@payments.example/ws';
ALTER SYSTEM SET kappa.soap_url = 'https://:secret@payments.example/ws';
ALTER SYSTEM SET kappa.soap_url = 'https://@payments.example/ws';
ALTER SYSTEM SET kappa.soap_url = 'https://payments.example/ws#page';
ALTER SYSTEM SET kappa.soap_url = 'https://payments.example/ws payments';
ALTER SYSTEM SET kappa.soap_url = 'https:///ws';
ALTER SYSTEM SET kappa.soap_page_size = 0;
ALTER SYSTEM SET kappa.soap_max_response_size = '1GB';
ALTER SYSTEM SET kappa.soap_poll_interval = '10ms';
ALTER SYSTEM SET kappa.soap_ca_file = 'ca.pem';
ALTER SYSTEM SET kappa.soap_ca_file = E'/etc/ssl/ca\nLOG:  forged';
ALTER SYSTEM SET kappa.soap_ca_file = '/etc/ssl/certs/payments-ca.pem';
ALTER SYSTEM RESET kappa.soap_ca_file;
ALTER SYSTEM SET kappa.soap_url = 'https://payments.example.internal:8443/ws/payments?v=1';
ALTER SYSTEM SET kappa.soap_url = 'HTTP://payments.example.internal/ws/payments';
ALTER SYSTEM SET kappa.soap_poll_interval = '5min';
ALTER SYSTEM RESET kappa.soap_url;
ALTER SYSTEM RESET kappa.soap_poll_interval;

-- the fixtures: two confirmations and a next page, then one (other
-- prefixes, a refund); the +01:00 time in UTC, amounts exact as sent
SELECT kind, key, pg_temp.stable(value) AS value, error
  FROM kappa.soap_decode(pg_read_file(:'page1'), 'http://payments.example.internal/ws/payments', '');
SELECT kind, key, pg_temp.stable(value) AS value, error
  FROM kappa.soap_decode(pg_read_file(:'page2'), 'http://payments.example.internal/ws/payments', 'page-2');
-- the envelope is JSON
SELECT (value::jsonb) -> 'after' ->> 'confirmed_at' AS confirmed_at,
       (value::jsonb) -> 'source' AS source
  FROM kappa.soap_decode(pg_read_file(:'page1'), 'http://x/', '')
 WHERE kind = 'message';

-- text is already decoded: an encoding declaration no longer applies to
-- its bytes (0.1.5; before, "ñ" came out as "Ã±")
SELECT kind, key
  FROM kappa.soap_decode(replace(replace(pg_read_file(:'page2'), 'encoding="UTF-8"', 'encoding="ISO-8859-1"'),
                                 '>1003<', '>Señor-1003<'))
 WHERE kind = 'message';

-- a SOAP Fault is an error with the fault string
SELECT * FROM kappa.soap_decode(pg_read_file(:'fault'));

-- no response (a subquery that found nothing): no rows, not a crash
SELECT count(*) FROM kappa.soap_decode(NULL);

-- no document type declarations at all: no entity expansion, no XXE
SELECT * FROM kappa.soap_decode($$<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<p:GetPaymentConfirmationsResponse xmlns:p="urn:electrored:payments:v1"><p:Confirmation>
<p:PaymentId>&lol9;</p:PaymentId><p:SaleId>1</p:SaleId><p:Status>CONFIRMED</p:Status>
<p:Amount currency="EUR">1.00</p:Amount><p:ConfirmedAt>2026-11-21T10:15:09Z</p:ConfirmedAt>
</p:Confirmation></p:GetPaymentConfirmationsResponse></soapenv:Body></soapenv:Envelope>$$);
SELECT * FROM kappa.soap_decode($$<?xml version="1.0"?>
<!DOCTYPE e [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<p:GetPaymentConfirmationsResponse xmlns:p="urn:electrored:payments:v1">
<p:NextPageToken>&xxe;</p:NextPageToken>
</p:GetPaymentConfirmationsResponse></soapenv:Body></soapenv:Envelope>$$);
SELECT * FROM kappa.soap_decode($$<?xml version="1.0"?>
<!DOCTYPE soapenv:Envelope SYSTEM "http://127.0.0.1:9/evil.dtd">
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body/></soapenv:Envelope>$$);
-- an undeclared entity is not well-formed
SELECT * FROM kappa.soap_decode($$<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<p:GetPaymentConfirmationsResponse xmlns:p="urn:electrored:payments:v1">
<p:NextPageToken>&xxe;</p:NextPageToken>
</p:GetPaymentConfirmationsResponse></soapenv:Body></soapenv:Envelope>$$);
-- XInclude is not processed: the element is refused as it is
SELECT kind, key, value, error FROM kappa.soap_decode($$<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<p:GetPaymentConfirmationsResponse xmlns:p="urn:electrored:payments:v1"><p:Confirmation>
<p:PaymentId><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/></p:PaymentId>
<p:SaleId>1</p:SaleId><p:Status>CONFIRMED</p:Status>
<p:Amount currency="EUR">1.00</p:Amount><p:ConfirmedAt>2026-11-21T10:15:09Z</p:ConfirmedAt>
</p:Confirmation></p:GetPaymentConfirmationsResponse></soapenv:Body></soapenv:Envelope>$$);

-- malformed documents and unexpected shapes are errors with detail
SELECT * FROM kappa.soap_decode(left(pg_read_file(:'page1'), 500));
SELECT * FROM kappa.soap_decode('');
SELECT * FROM kappa.soap_decode('<html><body>Service Unavailable</body></html>');
SELECT * FROM kappa.soap_decode('<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body/></env:Envelope>');
SELECT * FROM kappa.soap_decode('<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/></s:Envelope>');
SELECT * FROM kappa.soap_decode('<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>');
SELECT * FROM kappa.soap_decode('<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetPaymentConfirmationsResponse/></s:Body></s:Envelope>');
-- prefixes do not matter, namespaces do: the default namespace works
SELECT kind, key, value FROM kappa.soap_decode('<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body><GetPaymentConfirmationsResponse xmlns="urn:electrored:payments:v1"><NextPageToken> p-3 </NextPageToken></GetPaymentConfirmationsResponse></Body></Envelope>');
-- an empty response page, and an empty token: the last page
SELECT count(*) FROM kappa.soap_decode('<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><r:GetPaymentConfirmationsResponse xmlns:r="urn:electrored:payments:v1"><r:NextPageToken/></r:GetPaymentConfirmationsResponse></s:Body></s:Envelope>');

-- bad confirmations are dead letters with the reason; the others go on
CREATE FUNCTION pg_temp.confirmation(payment_id text, sale_id text, status text,
                                     amount text, currency text, confirmed_at text)
RETURNS text LANGUAGE sql AS $$
  SELECT '<p:Confirmation>'
      || coalesce('<p:PaymentId>' || payment_id || '</p:PaymentId>', '')
      || coalesce('<p:SaleId>' || sale_id || '</p:SaleId>', '')
      || coalesce('<p:Status>' || status || '</p:Status>', '')
      || coalesce('<p:Amount' || coalesce(' currency="' || currency || '"', '') || '>' || amount || '</p:Amount>', '')
      || coalesce('<p:ConfirmedAt>' || confirmed_at || '</p:ConfirmedAt>', '')
      || '</p:Confirmation>'
$$;
CREATE FUNCTION pg_temp.response(confirmations text) RETURNS text LANGUAGE sql AS $$
  SELECT '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
      || '<p:GetPaymentConfirmationsResponse xmlns:p="urn:electrored:payments:v1">'
      || confirmations
      || '</p:GetPaymentConfirmationsResponse></soapenv:Body></soapenv:Envelope>'
$$;
SELECT kind, key, pg_temp.stable(value) AS value, error
  FROM kappa.soap_decode(pg_temp.response(
         pg_temp.confirmation('PAY-1', '1', 'CONFIRMED', '10.00', 'EUR', '2026-11-21T10:00:00Z')
      || pg_temp.confirmation(NULL, '2', 'CONFIRMED', '10.00', 'EUR', '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('PAY-3', NULL, 'CONFIRMED', '10.00', 'EUR', '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('PAY-4', '4', 'PENDING', '10.00', 'EUR', '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('PAY-5', '5', 'CONFIRMED', '12,50', 'EUR', '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('PAY-6', '6', 'CONFIRMED', '1e3', 'EUR', '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('PAY-7', '7', 'CONFIRMED', '10.00', NULL, '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('PAY-8', '8', 'CONFIRMED', '10.00', 'euro', '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('PAY-9', '9', 'CONFIRMED', '10.00', 'EUR', '2026-02-30T10:00:00Z')
      || pg_temp.confirmation('PAY-10', '10', 'CONFIRMED', '10.00', 'EUR', 'now')
      || pg_temp.confirmation('PAY-11', '11', 'CONFIRMED', '10.00', 'EUR', '2026-11-21 10:00:00')
      || pg_temp.confirmation('PAY-12', '12', 'CONFIRMED', '10.00', 'EUR', '2026-11-21T10:00:00+15:00')
      || pg_temp.confirmation('PAY-13', '13', 'CONFIRMED', '10.00', 'EUR', NULL)
      || pg_temp.confirmation('PAY-14', '14', 'CONFIRMED', NULL, NULL, '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('', '15', 'CONFIRMED', '10.00', 'EUR', '2026-11-21T10:00:00Z')
      || '<p:Confirmation><p:PaymentId>PAY-16</p:PaymentId><p:PaymentId>PAY-16b</p:PaymentId></p:Confirmation>'
      || pg_temp.confirmation(' PAY-17 ', ' 17 ', 'REFUNDED', ' +5 ', 'USD', ' 2026-11-21T23:30:00-02:30 ')
      || pg_temp.confirmation('PAY-18 "quoted" \ back', '18', 'CONFIRMED', '.5', 'EUR', '2026-11-21T24:00:00Z')
      || pg_temp.confirmation('PAY-19', '19', 'CONFIRMED', '0.1', 'EUR', '2026-11-21T23:59:59.9999999Z')
      || pg_temp.confirmation('PAY-20', '20', 'CONFIRMED', '-0.00', 'EUR', '2024-02-29T10:00:00')
      || pg_temp.confirmation('<![CDATA[PAY-21]]>', '21<!-- a comment -->', 'CONFIRMED', '1', 'EUR', '2026-11-21T10:00:00Z')
      || pg_temp.confirmation('PAY-&#x20AC;&amp;', '22', 'CONFIRMED', '1', 'EUR', '2026-11-21T10:00:00Z')
       ));

-- xsd:dateTime read by the poller agrees with PostgreSQL's timestamptz
-- (the poller's session runs in UTC, where a time without zone is UTC)
SET TimeZone = 'UTC';
WITH t(s) AS (VALUES ('2026-11-21T10:16:41.250+01:00'), ('2026-11-21T10:15:09Z'),
                     ('2000-01-01T00:00:00Z'), ('1999-12-31T23:59:59.999999-14:00'),
                     ('0001-01-01T00:00:00Z'), ('9999-12-31T23:59:59.999999+14:00'),
                     ('2024-02-29T12:00:00+05:45'), ('1970-01-01T00:00:00.000001Z'),
                     ('2026-03-29T02:30:00+02:00'), ('2026-11-21T10:00:00'))
SELECT s,
       (d.value::jsonb) -> 'after' ->> 'confirmed_at' AS poller,
       (d.value::jsonb) -> 'after' ->> 'confirmed_at' =
         to_char(s::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS agrees
  FROM t, kappa.soap_decode(pg_temp.response(
            pg_temp.confirmation('PAY', '1', 'CONFIRMED', '1', 'EUR', s))) d
 ORDER BY s;
RESET TimeZone;

-- amounts the stream workers can carry (36 significant digits, 36 after the
-- point) are sent; longer ones are dead letters that say so (0.1.5)
SELECT a.n, d.kind, CASE d.kind WHEN 'message' THEN (d.value::jsonb) -> 'after' ->> 'amount' ELSE d.error END AS amount_or_error
  FROM (VALUES (1, repeat('9', 36)), (2, repeat('9', 37)), (3, '-' || repeat('9', 36)),
               (4, '0.' || repeat('0', 35) || '1'), (5, '0.' || repeat('0', 36) || '1'),
               (6, repeat('0', 40) || '1.50'), (7, '1.' || repeat('0', 36)),
               (8, repeat('1', 20) || '.' || repeat('1', 17))) AS a(n, amount),
       kappa.soap_decode(pg_temp.response(
            pg_temp.confirmation('PAY-A' || n, n::text, 'CONFIRMED', amount, 'EUR', '2026-11-21T10:00:00Z'))) d
 ORDER BY a.n;
