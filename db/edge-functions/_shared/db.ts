/**
 * The only module of the Edge Functions that talks to PostgreSQL.
 *
 * Why one place: every statement below calls one `api.*` function, exactly like the Flask app
 * does, inside one transaction that first switches to a configurable role (`set_config('role',
 * …, true)`, the transaction-local form of SET ROLE, which also works behind Supabase's
 * transaction pooler). When a function is renamed or a role is split, only this file changes.
 *
 * Settings (environment / `supabase secrets set`):
 * - TOKENBILL_DATABASE_URL: a postgres:// URL; Supabase's own SUPABASE_DB_URL when unset.
 * - TOKENBILL_WEBHOOK_ROLE / TOKENBILL_AGENT_ROLE: the role each function acts as
 *   (default tokenbill_app, the role the web app acts as).
 * - TOKENBILL_DB_TIMEOUT_SECONDS: longest wait for a connection (default 10).
 */
import postgres from "npm:postgres@3.4.9";

export type Sql = ReturnType<typeof postgres>;

/**
 * The role each caller acts as: its setting, and the default when unset. The one place to
 * change when the Stripe events get a role of their own (e.g. tokenbill_webhook).
 */
export const ROLES = {
  webhook: { setting: "TOKENBILL_WEBHOOK_ROLE", fallback: "tokenbill_app" },
  agent: { setting: "TOKENBILL_AGENT_ROLE", fallback: "tokenbill_app" },
} as const;
export type Caller = keyof typeof ROLES;

/** SQLSTATEs caused by the request itself (bad argument): retrying cannot help. */
const CLIENT_SQLSTATES = new Set(["TB003"]);

export function roleFor(caller: Caller): string {
  return Deno.env.get(ROLES[caller].setting) || ROLES[caller].fallback;
}

let client: Sql | undefined;

/** One small pool per isolate, opened lazily so a missing URL is a 5xx, not a boot failure. */
function pool(): Sql {
  if (client) return client;
  const url = Deno.env.get("TOKENBILL_DATABASE_URL") || Deno.env.get("SUPABASE_DB_URL");
  if (!url) throw new Error("TOKENBILL_DATABASE_URL (or SUPABASE_DB_URL) is not set");
  client = postgres(url, {
    max: 3,
    connect_timeout: Number(Deno.env.get("TOKENBILL_DB_TIMEOUT_SECONDS")) || 10,
    idle_timeout: 60,
    prepare: false, // Supabase's transaction pooler cannot keep prepared statements
    fetch_types: false,
    onnotice: () => {},
  });
  return client;
}

/** A role that cannot be taken (missing, or the login is not a member): the operator's fault. */
export class RoleError extends Error {
  override name = "RoleError";
}

/** Run ``work`` in one transaction acting as the caller's role; resolves after COMMIT. */
async function asRole<T>(caller: Caller, work: (tx: Sql) => Promise<T>): Promise<T> {
  return await pool().begin(async (tx) => {
    const role = roleFor(caller);
    try {
      await tx`select set_config('role', ${role}, true)`;
    } catch (error) {
      // Not a PostgresError any more: a misconfigured role must never look like a bad request.
      if (!(error instanceof postgres.PostgresError)) throw error;
      throw new RoleError(`cannot act as role ${role}: ${error.message}`);
    }
    return await work(tx as unknown as Sql);
  }) as T;
}

/** True when the database refused the arguments (TB003, or a data exception such as bad JSON). */
export function isClientError(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return error instanceof postgres.PostgresError && typeof code === "string" &&
    (CLIENT_SQLSTATES.has(code) || code.startsWith("22"));
}

/** HTTP status for a database error, like webapp/errors.py: ours are 4xx, the rest 503. */
export function httpStatusFor(error: unknown): number {
  const code = sqlstate(error) ?? "";
  if (code in SQLSTATE_STATUS) return SQLSTATE_STATUS[code];
  return code.startsWith("22") ? 400 : 503;
}

const SQLSTATE_STATUS: Record<string, number> = {
  TB001: 409, // immutable
  TB002: 404, // not found
  TB003: 400, // invalid argument
  TB004: 409, // conflict
  TB005: 409, // would go negative
  TB006: 403, // forbidden
};

/** The SQLSTATE of a database error, for status mapping; undefined for connection trouble. */
export function sqlstate(error: unknown): string | undefined {
  return error instanceof postgres.PostgresError ? error.code : undefined;
}

// ------------------------------------------------------------------------------------------
// Stripe events
// ------------------------------------------------------------------------------------------
export interface EventOutcome {
  event_id: string;
  outcome: string;
  detail: string;
}

/** api.handle_stripe_event on the verified raw body: the whole effect, once, committed. */
export async function handleStripeEvent(body: string): Promise<EventOutcome> {
  const rows = await asRole("webhook", (tx) =>
    tx<EventOutcome[]>`
      select event_id, outcome, detail from api.handle_stripe_event(${body}::text::jsonb)`);
  return rows[0];
}

/** Leave a trace of a failed delivery in api.stripe_events (best effort, own transaction). */
export async function recordStripeEventFailure(body: string, error: string): Promise<void> {
  await asRole(
    "webhook",
    (tx) => tx`select api.record_stripe_event_failure(${body}::text::jsonb, ${error})`,
  );
}

// ------------------------------------------------------------------------------------------
// Agent metering (today's begin → finish/fail; one place to switch to reserve → settle)
// ------------------------------------------------------------------------------------------
export interface Begun {
  outcome: "started" | "insufficient_tokens" | "replayed";
  conversation_id: string | null;
  balance: number;
  status: string | null;
  reply: string | null;
  error: string | null;
}

/** The user of an API key (its SHA-256 hex), or null; also stamps the key's last use. */
export async function userForApiKey(keyHash: string): Promise<string | null> {
  const rows = await asRole(
    "agent",
    (tx) => tx<{ user_id: string | null }[]>`select api.user_for_api_key(${keyHash}) as user_id`,
  );
  return rows[0]?.user_id ?? null;
}

/** Charge ``cost`` tokens for this request id and record it, or say why not. */
export async function beginAgentRequest(
  userId: string,
  requestId: string,
  conversationId: string | null,
  message: string,
  cost: number,
): Promise<Begun> {
  const rows = await asRole("agent", (tx) =>
    tx<Begun[]>`
      select outcome, conversation_id, balance, status, reply, error
        from api.begin_agent_request(${userId}::uuid, ${requestId}, ${conversationId}::uuid,
                                     ${message}, ${cost}::integer)`);
  return rows[0];
}

/** Store the reply of a started request; returns the balance. */
export async function finishAgentRequest(
  userId: string,
  requestId: string,
  reply: string,
): Promise<number> {
  const rows = await asRole("agent", (tx) =>
    tx<{ balance: number }[]>`
      select balance from api.finish_agent_request(${userId}::uuid, ${requestId}, ${reply})`);
  return rows[0].balance;
}

/** Mark a started request failed and give its tokens back; returns the balance. */
export async function failAgentRequest(
  userId: string,
  requestId: string,
  error: string,
  timedOut: boolean,
): Promise<number> {
  const rows = await asRole("agent", (tx) =>
    tx<{ balance: number }[]>`
      select balance from api.fail_agent_request(${userId}::uuid, ${requestId},
                                                 ${error.slice(0, 1000)}, ${timedOut})`);
  return rows[0].balance;
}
