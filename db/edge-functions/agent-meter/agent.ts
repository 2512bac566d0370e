/**
 * The agent a metered call runs: an OpenAI-compatible chat completion when LLM_BASE_URL is set
 * (LLM_API_KEY, LLM_MODEL, like the web app), else an offline echo so the function works
 * without a provider. Replace this module with your own agent; the metering does not change.
 */

export class AgentTimeout extends Error {
  override name = "AgentTimeout";
}

function model(): string {
  return Deno.env.get("LLM_MODEL") || "gpt-4o-mini";
}

/** What the call runs: the model's name, or `echo` (offline). */
export function agentName(): string {
  return Deno.env.get("LLM_BASE_URL") ? model() : "echo";
}

/**
 * Which row of tokenbill.prices applies, as webapp/agents' price_key: the model's name, else
 * the agent's; the database falls back to the '*' row when there is none.
 */
export function priceKey(): string {
  return agentName();
}

export async function answer(message: string, timeoutSeconds: number): Promise<string> {
  const base = Deno.env.get("LLM_BASE_URL");
  if (!base) return `You said: ${message}`;
  const signal = AbortSignal.timeout(timeoutSeconds * 1000);
  try {
    const response = await fetch(`${base.replace(/\/+$/, "")}/chat/completions`, {
      method: "POST",
      signal,
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${Deno.env.get("LLM_API_KEY") ?? ""}`,
      },
      body: JSON.stringify({ model: model(), messages: [{ role: "user", content: message }] }),
    });
    if (!response.ok) throw new Error(`the model provider answered ${response.status}`);
    const data = await response.json();
    const reply = data?.choices?.[0]?.message?.content;
    if (typeof reply !== "string" || !reply) throw new Error("the model provider sent no reply");
    return reply;
  } catch (error) {
    if (signal.aborted) throw new AgentTimeout(`no answer within ${timeoutSeconds} s`);
    throw error;
  }
}
