-- -------------------------------------------------------------------------
-- SOAP payment poller: the watermark of each endpoint, and a decoder for
-- looking at responses by hand (docs/soap-payments.md)
-- -------------------------------------------------------------------------

-- One row per endpoint (kappa.soap_url).  A poll asks for the confirmations
-- since "since" (inclusive) and pages through the service's page tokens;
-- page_token is the next page of a poll under way.  Each page's row update
-- commits only after Kafka acknowledged the page's messages.
CREATE TABLE kappa.soap_state (
    endpoint text PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    since_payment_ids text[] NOT NULL DEFAULT '{}',
    page_token text,
    poll_max_confirmed_at timestamptz,
    poll_max_payment_ids text[] NOT NULL DEFAULT '{}',
    last_poll_at timestamptz,
    last_success_at timestamptz
);

COMMENT ON TABLE kappa.soap_state IS
    'SOAP payment poller: watermark (since), the payment ids already sent at it, and the page of a poll under way, per endpoint';
COMMENT ON COLUMN kappa.soap_state.since IS
    'Latest ConfirmedAt sent to Kafka; the next poll asks for confirmations at or after it';
COMMENT ON COLUMN kappa.soap_state.since_payment_ids IS
    'Payment ids already sent whose ConfirmedAt equals since: the next poll does not send them again';
COMMENT ON COLUMN kappa.soap_state.page_token IS
    'Next page of the poll under way (NULL: the next poll starts from since)';

SELECT pg_catalog.pg_extension_config_dump('kappa.soap_state', '');
REVOKE ALL ON kappa.soap_state FROM PUBLIC;
GRANT SELECT ON kappa.soap_state TO pg_monitor;

CREATE FUNCTION kappa.soap_decode(
    response text,
    endpoint text DEFAULT '',
    page text DEFAULT '',
    OUT kind text,
    OUT key text,
    OUT value text,
    OUT error text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'kappa_soap_decode'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION kappa.soap_decode(text, text, text) IS
    'What the SOAP poller makes of a GetPaymentConfirmations response: messages, dead letters, next page';

REVOKE ALL ON FUNCTION kappa.soap_decode(text, text, text) FROM PUBLIC;
