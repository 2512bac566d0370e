/**
 * Supabase Edge Function `stripe-webhook`: the same contract as webapp/webhooks.py.
 *
 * Verify the Stripe-Signature over the raw body with the official SDK, then hand the event to
 * PostgreSQL once (api.handle_stripe_event does dedupe, grant and clawback in one transaction).
 * 200 only after COMMIT; database trouble answers 500 so Stripe retries, because a 2xx with a
 * lost grant can never be recovered from Stripe's side. Forged, stale or malformed → 400;
 * a body over TOKENBILL_WEBHOOK_MAX_BYTES (default 1 MiB) → 413; both change nothing.
 *
 * The event is applied as `tokenbill_webhook`, the only role allowed to (../_shared/db.ts), with
 * the mode of the deployment's Stripe key: an event of the other mode (a test event reaching a
 * live deployment, or the reverse) is recorded as rejected and grants nothing.
 *
 * Secrets: STRIPE_WEBHOOK_SECRET (whsec_…); STRIPE_SECRET_KEY, only read for its mode
 * (`sk_live_…`/`rk_live_…` live, else test; unset: no mode check), exactly as
 * webapp/config.py's stripe_livemode; plus the database settings in ../_shared/db.ts.
 * Deploy with JWT verification off: Stripe sends no Supabase token (see db/README.md).
 */
import Stripe from "npm:stripe@23.1.0";
import * as db from "../_shared/db.ts";
import { envNumber, json, log, readCapped } from "../_shared/http.ts";

const cryptoProvider = Stripe.createSubtleCryptoProvider();
const DEFAULT_MAX_BYTES = 1024 * 1024;

/** The mode of the configured Stripe key, or null without one (as webapp/config.py). */
export function stripeLivemode(): boolean | null {
  const key = Deno.env.get("STRIPE_SECRET_KEY") ?? "";
  return key ? key.includes("_live_") : null;
}

export async function handle(request: Request): Promise<Response> {
  if (request.method !== "POST") return json(405, { error: "POST only" });
  const secret = Deno.env.get("STRIPE_WEBHOOK_SECRET") ?? "";
  if (!secret) {
    log("error", "STRIPE_WEBHOOK_SECRET is not set: refusing webhook (events stay at Stripe)");
    return json(500, { error: "webhook secret not configured" });
  }
  const signature = request.headers.get("stripe-signature");
  if (!signature) return json(400, { error: "missing signature" });

  const raw = await readCapped(
    request,
    envNumber("TOKENBILL_WEBHOOK_MAX_BYTES", DEFAULT_MAX_BYTES),
  );
  if (raw === null) return json(413, { error: "payload too large" });

  let body: string;
  let event: unknown;
  try {
    body = new TextDecoder("utf-8", { fatal: true }).decode(raw);
    event = await Stripe.webhooks.constructEventAsync(
      body,
      signature,
      secret,
      undefined,
      cryptoProvider,
    );
  } catch (error) {
    const forged = error instanceof Stripe.errors.StripeSignatureVerificationError;
    log("warn", forged ? "invalid signature" : "malformed payload", { bytes: raw.byteLength });
    return json(400, { error: forged ? "invalid signature" : "malformed payload" });
  }
  if (typeof event !== "object" || event === null || Array.isArray(event)) {
    return json(400, { error: "malformed payload" });
  }
  const eventId = String((event as { id?: unknown }).id ?? "");

  try {
    const row = await db.handleStripeEvent(body, stripeLivemode());
    log("info", "stripe event handled", { ...row });
    return json(200, { received: true, outcome: row.outcome, detail: row.detail });
  } catch (error) {
    if (db.isClientError(error)) {
      log("warn", "stripe event refused by the database", {
        eventId,
        sqlstate: db.sqlstate(error),
      });
      return json(400, { error: "malformed event" });
    }
    return await failed(body, eventId, error);
  }
}

/** Log, try to leave a trace in api.stripe_events, and ask Stripe to retry. */
async function failed(body: string, eventId: string, error: unknown): Promise<Response> {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  log("error", "stripe event not handled, Stripe will retry", { eventId, error: text });
  try {
    await db.recordStripeEventFailure(body, text);
  } catch (recordError) {
    log("warn", "could not record the failure", { eventId, error: String(recordError) });
  }
  return json(500, { error: "event not processed; retry later" });
}

Deno.serve(handle);
