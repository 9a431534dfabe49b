import { useCallback, useEffect, useRef, useState } from "react";
import {
  BffError,
  SignedOut,
  bffJson,
  endAllSessions,
  endSession,
  getUser,
  listSessions,
  login,
  logout,
  onSignedInElsewhere,
  onSignedOut,
  type SessionInfo,
  type SignedOutReason,
  type User,
} from "./bff";

type State =
  | { kind: "loading" }
  | { kind: "signed-out"; reason: SignedOutReason | null }
  | { kind: "signed-in"; user: User }
  | { kind: "error"; message: string };

const REASONS: Record<SignedOutReason, string> = {
  logout: "You signed out.",
  expired: "Your session has ended. Sign in again to continue.",
  "ended-elsewhere": "This session was ended.",
};

function describeError(err: unknown): string {
  if (err instanceof BffError || err instanceof SignedOut) return err.message;
  return String(err);
}

function time(seconds: number | null | undefined): string {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

export function App() {
  const [state, setState] = useState<State>({ kind: "loading" });
  const current = useRef(state);
  useEffect(() => {
    current.current = state;
  }, [state]);

  const load = useCallback(async () => {
    try {
      const user = await getUser();
      setState(user ? { kind: "signed-in", user } : { kind: "signed-out", reason: null });
    } catch (err) {
      setState({ kind: "error", message: describeError(err) });
    }
  }, []);

  useEffect(() => {
    void load();
    const offOut = onSignedOut((reason) => setState({ kind: "signed-out", reason }));
    const offIn = onSignedInElsewhere((session) => {
      const s = current.current;
      if (s.kind === "signed-out" || (s.kind === "signed-in" && s.user.session.id !== session)) void load();
    });
    return () => {
      offOut();
      offIn();
    };
  }, [load]);

  return (
    <div className="page">
      <header className="top">
        <h1>bff demo</h1>
        <p className="tagline">A single-page app whose tokens never reach the browser.</p>
      </header>
      {state.kind === "loading" && (
        <p data-testid="loading" className="muted">
          Loading…
        </p>
      )}
      {state.kind === "error" && (
        <section className="card error" data-testid="app-error">
          <h2>Something went wrong</h2>
          <p>{state.message}</p>
          <button type="button" onClick={() => void load()}>
            Try again
          </button>
        </section>
      )}
      {state.kind === "signed-out" && <SignedOutView reason={state.reason} />}
      {state.kind === "signed-in" && <SignedInView user={state.user} onReload={load} />}
    </div>
  );
}

function SignedOutView({ reason }: { reason: SignedOutReason | null }) {
  return (
    <section className="card" data-testid="signed-out">
      <h2>You are signed out</h2>
      {reason && (
        <p className="notice" data-testid="signed-out-reason" data-reason={reason}>
          {REASONS[reason]}
        </p>
      )}
      <p>
        Sign in with the demo identity provider. The app gets a session cookie from its
        backend-for-frontend; the tokens stay on the server.
      </p>
      <button type="button" className="primary" data-testid="login-button" onClick={() => login()}>
        Sign in
      </button>
    </section>
  );
}

function SignedInView({ user, onReload }: { user: User; onReload: () => Promise<void> }) {
  const name =
    (user.claims.name as string | undefined) ??
    (user.claims.preferred_username as string | undefined) ??
    user.sub;
  return (
    <>
      <section className="card" data-testid="signed-in" data-sub={user.sub}>
        <div className="row">
          <h2>
            Signed in as <span data-testid="user-name">{name}</span>
          </h2>
          <button type="button" data-testid="logout-button" onClick={() => logout(user)}>
            Sign out
          </button>
        </div>
        <dl className="facts" data-testid="session-info" data-session-id={user.session.id}>
          <dt>Signed in at</dt>
          <dd>{time(user.session.created_at)}</dd>
          <dt>Session ends</dt>
          <dd>{time(user.session.expires_at)} (or after {Math.round(user.session.idle_timeout / 60)} idle minutes)</dd>
          <dt>Access token valid until</dt>
          <dd data-testid="access-token-expires" data-value={user.session.access_token_expires_at ?? ""}>
            {time(user.session.access_token_expires_at)} <span className="muted">(held by the BFF, not here)</span>
          </dd>
        </dl>
        <h3>Your ID token claims</h3>
        <table className="claims" data-testid="claims">
          <tbody>
            {Object.entries(user.claims).map(([key, value]) => (
              <tr key={key} data-testid={`claim-${key}`}>
                <th>{key}</th>
                <td>{typeof value === "string" ? value : JSON.stringify(value)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <button type="button" data-testid="reload-user" onClick={() => void onReload()}>
          Reload
        </button>
      </section>
      <ApiPanel />
      <LivePanel />
      <RouteTokensPanel />
      <SessionsPanel />
    </>
  );
}

interface WhoAmI {
  sub: string;
  preferred_username?: string;
  message?: string;
  calls: number;
  token: { jti?: string; iat?: number; exp: number; expires_in: number };
}

function ApiPanel() {
  const [result, setResult] = useState<WhoAmI | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const call = async () => {
    setBusy(true);
    setError(null);
    try {
      setResult(await bffJson<WhoAmI>("/api/whoami"));
    } catch (err) {
      if (err instanceof SignedOut) return; // the app switches to the signed-out screen
      setResult(null);
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="card" data-testid="api-panel">
      <div className="row">
        <h2>Call the API</h2>
        <button type="button" className="primary" data-testid="call-api" disabled={busy} onClick={() => void call()}>
          GET /api/whoami
        </button>
      </div>
      <p className="muted">
        The BFF forwards the call to the sample API with your access token, refreshing it first when it is
        about to expire.
      </p>
      {error && (
        <p className="error" data-testid="api-error">
          {error}
        </p>
      )}
      {result && (
        <div data-testid="api-result" data-calls={result.calls} data-jti={result.token.jti ?? ""}>
          <p data-testid="api-message">{result.message}</p>
          <pre>{JSON.stringify(result, null, 2)}</pre>
        </div>
      )}
    </section>
  );
}

interface LiveTick {
  server_time: number;
  sub: string;
  token_expires_in: number;
}

/** A WebSocket to the sample API through the BFF (/api/live): the browser's handshake carries
 * only its cookie and Origin; the BFF adds the access token. It closes with 4401 when the
 * session ends, wherever it ends. */
function LivePanel() {
  const [ticks, setTicks] = useState(0);
  const [last, setLast] = useState<LiveTick | null>(null);
  const [state, setState] = useState<"connecting" | "open" | "closed">("connecting");
  const [closeCode, setCloseCode] = useState<number | null>(null);

  useEffect(() => {
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/live`;
    const socket = new WebSocket(url);
    socket.onopen = () => setState("open");
    socket.onmessage = (event: MessageEvent<string>) => {
      setLast(JSON.parse(event.data) as LiveTick);
      setTicks((n) => n + 1);
    };
    socket.onclose = (event: CloseEvent) => {
      setState("closed");
      setCloseCode(event.code);
    };
    return () => socket.close(1000, "panel closed");
  }, []);

  return (
    <section className="card" data-testid="live-panel" data-state={state} data-ticks={ticks}>
      <div className="row">
        <h2>Live (WebSocket)</h2>
        <span className="muted" data-testid="live-state">
          {state}
          {closeCode !== null && ` (code ${closeCode}${closeCode === 4401 ? ": session ended" : ""})`}
        </span>
      </div>
      {last && (
        <p data-testid="live-last">
          Server time {new Date(last.server_time * 1000).toLocaleTimeString()}; your access token expires in{" "}
          {last.token_expires_in} s ({ticks} messages).
        </p>
      )}
    </section>
  );
}

interface OtherApi {
  sub: string;
  aud: string | string[];
  azp?: string;
  api: string;
  token: { jti?: string; exp: number };
}

/** Two more routes of the same sample API, each with a token of its own (BFF_API_ROUTES):
 * /reports gets a token the BFF exchanged for the audience demo-reports, /status the BFF's
 * own client-credentials token. */
function RouteTokensPanel() {
  const [results, setResults] = useState<Record<string, OtherApi | string>>({});

  const call = async (name: "reports" | "status") => {
    try {
      const answer = await bffJson<OtherApi>(`/${name}/whoami`);
      setResults((r) => ({ ...r, [name]: answer }));
    } catch (err) {
      if (err instanceof SignedOut) return;
      setResults((r) => ({ ...r, [name]: describeError(err) }));
    }
  };

  return (
    <section className="card" data-testid="route-tokens-panel">
      <div className="row">
        <h2>Tokens per API</h2>
        <button type="button" data-testid="call-reports" onClick={() => void call("reports")}>
          GET /reports/whoami
        </button>
        <button type="button" data-testid="call-status" onClick={() => void call("status")}>
          GET /status/whoami
        </button>
      </div>
      <p className="muted">
        /reports is called with a token exchanged for its own audience (RFC 8693), /status with the BFF&apos;s own
        client-credentials token: neither sees your login&apos;s token.
      </p>
      {(["reports", "status"] as const).map((name) => {
        const result = results[name];
        if (result === undefined) return null;
        if (typeof result === "string") {
          return (
            <p key={name} className="error" data-testid={`${name}-error`}>
              {result}
            </p>
          );
        }
        return (
          <div key={name} data-testid={`${name}-result`} data-jti={result.token.jti ?? ""}>
            <pre>{JSON.stringify(result, null, 2)}</pre>
          </div>
        );
      })}
    </section>
  );
}

function SessionsPanel() {
  const [sessions, setSessions] = useState<SessionInfo[] | null>(null);
  const [error, setError] = useState<string | null>(null);

  const refresh = useCallback(async () => {
    setError(null);
    try {
      setSessions((await listSessions()).sessions);
    } catch (err) {
      if (!(err instanceof SignedOut)) setError(describeError(err));
    }
  }, []);

  useEffect(() => {
    void refresh();
  }, [refresh]);

  const end = async (s: SessionInfo) => {
    try {
      await endSession(s.id, s.current);
      if (!s.current) await refresh();
    } catch (err) {
      if (!(err instanceof SignedOut)) setError(describeError(err));
    }
  };

  const endAll = async () => {
    try {
      await endAllSessions();
    } catch (err) {
      if (!(err instanceof SignedOut)) setError(describeError(err));
    }
  };

  return (
    <section className="card" data-testid="sessions-panel">
      <div className="row">
        <h2>Your sessions</h2>
        <button type="button" data-testid="refresh-sessions" onClick={() => void refresh()}>
          Refresh
        </button>
      </div>
      {error && (
        <p className="error" data-testid="sessions-error">
          {error}
        </p>
      )}
      {sessions === null ? (
        <p className="muted">Loading…</p>
      ) : (
        <ul className="sessions" data-testid="sessions" data-count={sessions.length}>
          {sessions.map((s) => (
            <li
              key={s.id}
              data-testid="session-row"
              data-session-id={s.id}
              data-current={s.current ? "true" : "false"}
            >
              <div>
                <strong>{s.user_agent}</strong> {s.current && <span className="badge">this browser</span>}
                <div className="muted">
                  from {s.ip || "unknown"} · signed in {time(s.created_at)} · last seen {time(s.last_seen)}
                </div>
              </div>
              <button type="button" data-testid="end-session" onClick={() => void end(s)}>
                End
              </button>
            </li>
          ))}
        </ul>
      )}
      <button type="button" className="danger" data-testid="logout-everywhere" onClick={() => void endAll()}>
        Log out everywhere
      </button>
    </section>
  );
}
