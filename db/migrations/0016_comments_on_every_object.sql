/*
 * 0016 — a comment on every object (db/README.md promises it; db/tests/comments.sql keeps it).
 *
 * Functions carried their documentation only as /** */ blocks in the migration files, which
 * psql's \df+ and every database browser cannot show; six views and the ledger kind had none.
 * The function comments below repeat those blocks (the latest definition's). Changes nothing
 * else. A new object without a comment now fails the pgTAP suite.
 */

-- ============================================================================================
-- Views and types
-- ============================================================================================
comment on view api.packages is 'The token packages on sale (code, tokens, price in cents, lowercase currency); inactive ones stay for history.';
comment on view api.ledger_entries is 'Every token movement of every user, kind as text; the app always filters by user_id and pages by id.';
comment on view api.checkout_sessions is 'Checkout Sessions tokenbill created, with their status; for the success page, reconciliation and admins.';
comment on view api.stripe_events is 'The Stripe event inbox: each verified event with its outcome (processed, ignored, rejected, failed) and why; for admins.';
comment on view api.disputes is 'Chargebacks and inquiries per payment, with their status; for admins and the purchase history.';
comment on view api.low_balance_alerts is 'Low-balance alerts per user: open until acknowledged; notified_at once the notifier posted it.';
comment on view api.api_keys is 'API keys without their hashes: name, visible prefix, last use, revocation.';
comment on type tokenbill.ledger_kind is 'Why a ledger row moved tokens: purchase, consumption (and its refund), clawback (and its reversal), admin adjustment, and the agent holds'' reserve, settle and release.';

-- ============================================================================================
-- Functions (their /** */ documentation in the migration that last defined them)
-- ============================================================================================
comment on function api.acknowledge_low_balance_alerts(uuid) is
    'Dismiss the user''s open alerts (the header stops showing them). Returns how many.';
comment on function api.admin_adjust(uuid,uuid,integer,text) is
    'Credit or debit a user by hand. Only an admin may, a reason is required, and the result may not be negative (only refund/dispute clawbacks can make a balance negative).';
comment on function api.admin_adjust_balance(text,uuid,integer,text) is
    'An admin''s manual adjustment, for the admin role only. The acting admin is the owner of the live web session p_token_hash (an admin), so knowing an admin''s id is not enough.';
comment on function api.agent_price(text) is
    'The price of an agent''s requests, for the chat page and the 402/200 bodies.';
comment on function api.begin_agent_request(uuid,text,uuid,text,text,text,integer) is
    'Reserve an agent request''s maximum price and record it, or say why it cannot run. First settles this user''s overdue holds (a dead worker''s request never blocks its retry). outcome ''started'': max_per_call reserved (ledger ''reserve''), hold and messages stored. outcome ''insufficient_tokens'': nothing reserved, nothing stored. outcome ''replayed'': this request id was seen with the same body hash; status/reply/error/ charged are the first call''s. outcome ''mismatch'': same request id, different body: nothing charged (the client reused a key). A conversation that is not the user''s is TB002. price is what this request reserves (its most), charged what a finished one cost.';
comment on function api.billing_metrics() is
    'Business counters as (metric, labels, value) rows; webapp/metrics.py renders them in the Prometheus text format. Totals since the beginning, so they behave as counters.';
comment on function api.change_password(text,text) is
    'Change the password of the session''s user and end every other session of theirs, so a stolen cookie dies with the old password. The user comes from the live session only. Returns how many other sessions were ended.';
comment on function api.claim_alert_notifications(integer) is
    'Lock up to p_limit alerts not yet notified, oldest first, skipping ones another notifier holds. The caller posts them and calls api.finish_alert_notification in the same transaction.';
comment on function api.consume(uuid,text,integer) is
    'Take p_cost tokens for one agent request. Idempotent per (user, request id): a second call with the same request id charges nothing and returns the first call''s result with reason ''replayed''. Refuses (ok = false, reason ''insufficient_tokens'') rather than overdraw.';
comment on function api.create_api_key(uuid,text,text,text) is
    'Store a new key''s hash (the secret itself never reaches the database).';
comment on function api.daily_stats(integer) is
    'Tokens consumed per day now count settled agent requests: reservations minus what settle and release rows gave back, plus direct api.consume charges net of their refunds.';
comment on function api.end_web_session(text) is
    'End one session (logout). True when it was live.';
comment on function api.expire_agent_holds() is
    'Settle every hold past its expires_at by the expiry rule (see tokenbill.expire_hold), one user lock at a time. Run by the app''s periodic sweep and by operators. Returns how many.';
comment on function api.finish_alert_notification(bigint,text) is
    'Record the result of posting one alert: sent, or the error (it stays in the outbox).';
comment on function api.fulfil_checkout_session(jsonb,uuid) is
    'The success page''s fulfilment: the same as the webhook''s, for a session the signed-in user started. A session of someone else''s raises TB002, so the page shows nothing of theirs.';
comment on function api.grant_for_payment(text,text,text,integer,text,text,text,text,text) is
    'Credit a package to a user once per payment (PaymentIntent). The package table decides the tokens; amount and currency must match it; the user must exist. The Checkout Session tokenbill recorded for this payment — named by the caller, already linked to the payment, or linked to the PaymentIntent by an earlier session object — must agree on user and package, and a session already paid by another PaymentIntent is refused. Refusals are recorded on the payment (status ''rejected'', reason) and never raise, so Stripe''s retries do not loop. status: ''granted'' | ''already_granted'' | ''rejected'' (with reason; nothing credited).';
comment on function api.handle_stripe_event(jsonb,boolean) is
    'Store a verified Stripe event and apply it, once (see 0005). p_livemode is the mode of the Stripe key the caller holds: an event of the other mode is recorded as ''rejected'' and never applied (a test-mode event must not grant on a live deployment, nor the reverse).';
comment on function api.ledger_audit() is
    'Every user whose balance disagrees with their ledger: the sum of deltas, or the balance_after of their latest row. Must always return no rows.';
comment on function api.record_agent_delivery(uuid,text,integer,integer,integer) is
    'Record how much of a streamed reply is about to reach the client (parts and characters so far; the first call sets first_delivered_at). Called BEFORE the part is handed over, so a killed worker''s hold knows output was sent. Never lowers what was recorded. Returns false (and records nothing) when the hold is no longer held or its time is up: stop streaming.';
comment on function api.record_checkout_session(text,uuid,text,text) is
    'Record a Checkout Session tokenbill just created, with the package''s terms, before the user is sent to Stripe. Idempotent for the same session; refuses a session id owned by someone else.';
comment on function api.record_stripe_event_failure(jsonb,text) is
    'Keep a verified event whose handling failed (the effect rolled back), so admins see it. Never overwrites an event that was handled; its retry is handled normally.';
comment on function api.register_user(text,text) is
    'Create an account; TB004 when the email (case-insensitively) is taken.';
comment on function api.release(uuid,text,text) is
    'Give back the tokens of a consumption whose agent call failed. Idempotent: status is ''released'' the first time, ''already_released'' after, ''not_found'' when nothing was consumed.';
comment on function api.revoke_api_key(uuid,uuid) is
    'Revoke one of the user''s own keys; false when it is not theirs or already revoked.';
comment on function api.revoke_for_dispute(text,text,text,integer,text,text,text) is
    'Record a dispute''s state and hold back (or give back) the disputed share of tokens. A closed dispute (won, lost, warning_closed) never reopens, whatever order events arrive in. Returns the tokens moved by this call (positive = taken back).';
comment on function api.revoke_for_refund(text,text,integer,text) is
    'Record that a charge has been refunded p_amount_refunded cents in total (Stripe''s charge.amount_refunded, cumulative) and take back the matching share of tokens. Idempotent: the same or an older total moves nothing. Returns the tokens taken back by this call.';
comment on function api.set_admin(text,boolean) is
    'Make an account an admin (or not). Deliberately NOT granted to tokenbill_app: operators only.';
comment on function api.set_low_balance_threshold(uuid,integer) is
    'Set the user''s own alert threshold (0 turns alerts off).';
comment on function api.settle_agent_request(uuid,text,text,text,integer,text,integer) is
    'Settle a request however it ended. p_outcome: ''done'' (the agent finished), ''failed'', ''timeout'' or ''disconnected'' (the client left mid-stream). p_reply is everything that reached (or, for a computed JSON reply, will reach) the client, in p_parts parts. - delivered (p_reply non-empty, or the hold recorded a first delivery): charged its price, message ''done'' when the agent finished, else ''partial'' with what was delivered; - nothing delivered: released, message ''failed'' / ''timeout''. Status guard: a hold that is no longer held (settled already, e.g. by expiry) is left as it is and status is ''already_settled'' with the first settlement''s result. TB002: no such request. Returns the message status, the tokens charged and the balance after.';
comment on function api.start_web_session(uuid,text) is
    'Record a session the app just started after checking the password.';
comment on function api.user_credentials(text) is
    'What login needs to check a password.';
comment on function api.user_for_api_key(text) is
    'The user a live key belongs to (NULL if unknown or revoked); notes when it was last used.';
comment on function api.web_session_user(text) is
    'The account behind a live session, as flask-login loads it; no row when the session is dead.';
comment on function tokenbill.close_hold(tokenbill.agent_holds,boolean,integer,integer,text,integer) is
    'Close a locked, held hold: charge its price when something was delivered, else release it. The caller holds the user''s lock and the hold row''s. Returns the tokens charged.';
comment on function tokenbill.expire_hold(bigint) is
    'Settle one overdue hold by the expiry rule (its worker died or never reported): charged when first_delivered_at is set, released otherwise. The caller holds the user''s lock. Returns whether it was still held.';
comment on function tokenbill.forbid_ledger_change() is
    'Refuse any change to a ledger row: corrections are new rows.';
comment on function tokenbill.forbid_package_terms_change() is
    'Refuse to change what a package sells: payments in flight were quoted these terms.';
comment on function tokenbill.fulfil_checkout_session(jsonb,text,text) is
    'Fulfil a Checkout Session object (from an event, the success page or reconciliation). A session whose client_reference_id and metadata.user_id disagree is rejected with the reason; a session never moves to a second PaymentIntent once it has one.';
comment on function tokenbill.fulfil_payment_intent(jsonb,text) is
    'payment_intent.succeeded: grant, when its metadata says tokenbill created it.';
comment on function tokenbill.lock_user(uuid) is
    'Lock a user''s row so that all of that user''s movements run one at a time; raise if unknown.';
comment on function tokenbill.payment_row(text,text) is
    'The payments row for a PaymentIntent, created as ''pending'' if no event has named it yet.';
comment on function tokenbill.post_entry(uuid,tokenbill.ledger_kind,integer,boolean,text,bigint,text,text,text,text,text,text,uuid) is
    'Move p_delta tokens for a user and append the ledger row, in one place, so that users.balance always equals the sum of the user''s ledger deltas. Returns the new balance, or NULL (and changes nothing) when the balance would drop below zero and p_allow_negative is false. The UPDATE is a single conditional statement, so a balance can never be overdrawn, whatever runs concurrently.';
comment on function tokenbill.price_for(text) is
    'The price row for an agent price key, else the ''*'' row; TB002 when neither exists.';
comment on function tokenbill.price_of(integer,integer,integer,integer,integer,integer) is
    'What a call with these sizes costs under these price terms (the written rule above).';
comment on function tokenbill.record_low_balance_alert() is
    'Record an alert when this consumption crossed the user''s threshold.';
comment on function tokenbill.record_payment_failure(jsonb,text) is
    'Mark a not-yet-granted payment as failed and keep who tried to buy what, from the intent''s metadata. A user or package that does not exist is stored as NULL (the row is only shown, never granted, and a foreign-key error would make Stripe retry forever). What an earlier event already recorded wins over the metadata.';
comment on function tokenbill.record_payment_failure(text,text) is
    'Mark a not-yet-granted payment as failed and keep who tried to buy what, from the intent''s metadata. A user or package that does not exist is stored as NULL (the row is only shown, never granted, and a foreign-key error would make Stripe retry forever). What an earlier event already recorded wins over the metadata.';
comment on function tokenbill.settle_payment(bigint,text,text) is
    'Bring the tokens taken back for a payment in line with its facts: ceil(tokens * refunded / paid) for refunds plus the same for every dispute not won, capped at the tokens granted. Posts only the difference from what was already taken back, so calling it again, or with events in any order, moves nothing twice. Returns the tokens moved (negative = taken back).';
comment on function tokenbill.stripe_id(jsonb) is
    'The id of an expandable Stripe field, whether it arrived as an id or an expanded object.';
comment on function tokenbill.stripe_int(jsonb) is
    'An integer from Stripe JSON, or NULL when absent or not an integer (never an error).';
comment on function tokenbill.to_uuid(text) is
    'A user id as uuid, or NULL when it is not a well-formed uuid.';
comment on function tokenbill.web_session_max_age() is
    'Sessions live at most this long after login, whatever the cookie says.';
comment on function tokenbill.web_session_owner(text) is
    'The user of a live session (NULL when unknown, ended or too old).';
