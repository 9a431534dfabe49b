// The SPA's whole contact with the BFF. The browser holds no token: it holds an HttpOnly
// session cookie the BFF set, and every call below goes to the BFF's own origin.
//
// - Every call carries `X-CSRF: 1` (the BFF refuses calls without it: a cross-site form
//   or image cannot set a custom header) and `credentials: "same-origin"`.
// - 401 from any call means "signed out": the caller gets a SignedOut error, listeners
//   registered with onSignedOut() are told, and so are the app's other tabs (via a
//   BroadcastChannel), which switch to the signed-out screen without a round trip.
// - Sign-in and sign-out are top-level navigations (the BFF redirects to the identity
//   provider), never fetches.

export interface SessionFacts {
  id: string;
  created_at: number;
  expires_at: number;
  idle_expires_at: number;
  idle_timeout: number;
  access_token_expires_at: number | null;
}

export interface User {
  sub: string;
  claims: Record<string, unknown>;
  session: SessionFacts;
  logout_url: string;
}

export interface SessionInfo {
  id: string;
  created_at: number;
  last_seen: number;
  expires_at: number;
  user_agent: string;
  ip: string;
  current: boolean;
}

/** The BFF answered 401: there is no valid session (any more). */
export class SignedOut extends Error {
  constructor(message = "You are signed out.") {
    super(message);
    this.name = "SignedOut";
  }
}

/** Any other failure, with the BFF's (or the upstream's) {"error", "message"} when given. */
export class BffError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = "BffError";
    this.status = status;
    this.code = code;
  }
}

export type SignedOutReason = "logout" | "expired" | "ended-elsewhere";
type Listener = (reason: SignedOutReason) => void;
type TabMessage =
  | { type: "signed-out"; reason: SignedOutReason }
  | { type: "signed-in"; sub: string; session: string };

const CHANNEL_NAME = "bff-session";
const channel: BroadcastChannel | null =
  typeof BroadcastChannel === "undefined" ? null : new BroadcastChannel(CHANNEL_NAME);
const signedOutListeners = new Set<Listener>();
const signedInListeners = new Set<(session: string) => void>();

channel?.addEventListener("message", (event: MessageEvent<TabMessage>) => {
  const msg = event.data;
  if (msg?.type === "signed-out") {
    signedOutListeners.forEach((fn) => fn(msg.reason));
  } else if (msg?.type === "signed-in") {
    signedInListeners.forEach((fn) => fn(msg.session));
  }
});

/** Called when this tab or another one finds out the session is gone. Returns an unsubscribe. */
export function onSignedOut(fn: Listener): () => void {
  signedOutListeners.add(fn);
  return () => signedOutListeners.delete(fn);
}

/**
 * Called with the session's handle when another tab has signed in: a signed-out tab, or
 * one showing an older session (a new sign-in replaces this browser's session), should
 * load the user again.
 */
export function onSignedInElsewhere(fn: (session: string) => void): () => void {
  signedInListeners.add(fn);
  return () => signedInListeners.delete(fn);
}

function signedOut(reason: SignedOutReason, tellThisTab: boolean): void {
  channel?.postMessage({ type: "signed-out", reason } satisfies TabMessage);
  if (tellThisTab) signedOutListeners.forEach((fn) => fn(reason));
}

/** fetch() for the BFF and the APIs behind it: X-CSRF, same-origin cookies, 401 = signed out. */
export async function bffFetch(path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  headers.set("X-CSRF", "1");
  if (!headers.has("Accept")) headers.set("Accept", "application/json");
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers, credentials: "same-origin", redirect: "manual" });
  } catch (err) {
    throw new BffError(0, "network_error", `The server cannot be reached (${String(err)}).`);
  }
  if (response.status === 401) {
    signedOut("expired", true);
    throw new SignedOut(await errorMessage(response, "Your session has ended; sign in again."));
  }
  return response;
}

async function errorMessage(response: Response, fallback: string): Promise<string> {
  try {
    const body: unknown = await response.json();
    if (body && typeof body === "object" && "message" in body && typeof body.message === "string") {
      return body.message;
    }
  } catch {
    // not JSON: use the fallback
  }
  return fallback;
}

async function failure(response: Response): Promise<BffError> {
  let code = `http_${response.status}`;
  let message = `The request failed with status ${response.status}.`;
  try {
    const body: unknown = await response.json();
    if (body && typeof body === "object") {
      if ("error" in body && typeof body.error === "string") code = body.error;
      if ("message" in body && typeof body.message === "string") message = body.message;
    }
  } catch {
    // keep the generic text
  }
  return new BffError(response.status, code, message);
}

/** A JSON call: the parsed body on 2xx (undefined on 204), BffError otherwise, SignedOut on 401. */
export async function bffJson<T>(path: string, init: RequestInit = {}): Promise<T> {
  const response = await bffFetch(path, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

/** The signed-in user, or null when signed out. */
export async function getUser(): Promise<User | null> {
  const headers = { "X-CSRF": "1", Accept: "application/json" };
  const response = await fetch("/bff/user", { headers, credentials: "same-origin" });
  if (response.status === 401) return null;
  if (!response.ok) throw await failure(response);
  const user = (await response.json()) as User;
  channel?.postMessage({ type: "signed-in", sub: user.sub, session: user.session.id } satisfies TabMessage);
  return user;
}

/** Start a sign-in; the BFF brings the browser back to `returnTo` (a local path). */
export function login(returnTo: string = location.pathname + location.search + location.hash): void {
  location.assign(`/bff/login?returnTo=${encodeURIComponent(returnTo)}`);
}

/** Sign out here and at the identity provider; other tabs are told first. */
export function logout(user: User): void {
  signedOut("logout", false);
  location.assign(user.logout_url);
}

export function listSessions(): Promise<{ sessions: SessionInfo[] }> {
  return bffJson("/bff/sessions");
}

/** End one of the user's sessions (this one included: then this tab is signed out). */
export async function endSession(id: string, isCurrent: boolean): Promise<void> {
  await bffJson<void>(`/bff/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
  if (isCurrent) signedOut("ended-elsewhere", true);
}

/** "Log out everywhere": every session of this user ends, this one too. */
export async function endAllSessions(): Promise<void> {
  await bffJson<void>("/bff/sessions", { method: "DELETE" });
  signedOut("ended-elsewhere", true);
}
