/** Small HTTP helpers shared by the Edge Functions (no database, no secrets). */

export function json(status: number, body: Record<string, unknown>): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

/**
 * The request body as bytes, or null when it is larger than ``limit``: read in chunks and
 * abandoned at the limit, so a huge (or endless, chunked) body never sits in memory whole.
 */
export async function readCapped(request: Request, limit: number): Promise<Uint8Array | null> {
  const declared = Number(request.headers.get("content-length") ?? "0");
  if (declared > limit) return null;
  if (!request.body) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of request.body) {
    size += chunk.byteLength;
    if (size > limit) return null;
    chunks.push(chunk);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

/** A positive number from the environment, or ``fallback``. */
export function envNumber(name: string, fallback: number): number {
  const value = Number(Deno.env.get(name));
  return Number.isFinite(value) && value > 0 ? value : fallback;
}

/** One log line as JSON (Supabase's log explorer indexes it); never pass secrets here. */
export function log(level: "info" | "warn" | "error", message: string, fields = {}): void {
  const line = JSON.stringify({ level, message, ...fields });
  if (level === "info") console.log(line);
  else console.error(line);
}
