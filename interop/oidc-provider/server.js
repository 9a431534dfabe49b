// panva's oidc-provider (OpenID Certified), configured as the identity provider of the
// BFF's interoperability tests (tests/interop/). Plain http on loopback only.
//
// Usage: node server.js [--port N] [--issuer URL]
//
// Environment (all optional except a port):
//   OP_PORT                 port to listen on (or --port)
//   OP_ISSUER               issuer (or --issuer); default http://127.0.0.1:PORT
//   OP_CLIENTS              JSON list of clients: [{"client_id", "client_secret", "public_url",
//                           "token_endpoint_auth_method"?, "metadata"?}]; redirect, post-logout
//                           and back-channel logout URIs are derived from public_url, and
//                           "metadata" (client metadata, e.g. id_token_signed_response_alg)
//                           is merged last
//   BFF_PUBLIC_URL, OP_CLIENT_ID, OP_CLIENT_SECRET, OP_CLIENT_AUTH_METHOD
//                           one client, when OP_CLIENTS is not given
//                           (defaults: http://localhost:8080, bff, bff-secret, client_secret_basic)
//   OP_ACCESS_TOKEN_TTL     access token lifetime in seconds (default 60)
//   OP_REFRESH_TOKENS       "offline_access": oidc-provider's stock policy (a refresh token only for
//                           a grant holding offline_access, which oidc-provider keeps only when
//                           the authorization request carries prompt=consent, OIDC Core §11);
//                           "always": every code grant of a client allowed refresh_token
//                           (default offline_access)
//   OP_ROTATE_REFRESH_TOKEN "true" (default): every refresh rotates the refresh token;
//                           "stock": oidc-provider's default rotation policy
//   OP_CONFORM_ID_TOKEN_CLAIMS  "true" (default, oidc-provider's default): scope claims
//                           (email, name) only at UserInfo; "false": also in the ID token
//   OP_REQUIRE_PAR          "true": require pushed authorization requests (default false)
//
// The login page (devInteractions) accepts any login and password; the login becomes
// the account id (sub). Every account has email <login>@example.com and a name.
//
// Control hook for tests: POST /_control/backchannel-logout?sub=..&client_id=..&sid=..
// sends a back-channel logout token to the client (as the end_session flow would).
// Events (back-channel logout deliveries, errors) are printed one JSON line each.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: { port: { type: 'string' }, issuer: { type: 'string' } },
});

const port = Number(args.port || process.env.OP_PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('server.js: give a port (--port N or OP_PORT)');
  process.exit(2);
}
const issuer = args.issuer || process.env.OP_ISSUER || `http://127.0.0.1:${port}`;
const env = (name, fallback) => process.env[name] ?? fallback;

function clientsFromEnv() {
  if (process.env.OP_CLIENTS) {
    return JSON.parse(process.env.OP_CLIENTS);
  }
  return [{
    client_id: env('OP_CLIENT_ID', 'bff'),
    client_secret: env('OP_CLIENT_SECRET', 'bff-secret'),
    public_url: env('BFF_PUBLIC_URL', 'http://localhost:8080'),
    token_endpoint_auth_method: env('OP_CLIENT_AUTH_METHOD', 'client_secret_basic'),
  }];
}

const clients = clientsFromEnv().map((c) => {
  const base = c.public_url.replace(/\/+$/, '');
  return {
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: [`${base}/bff/callback`],
    post_logout_redirect_uris: [`${base}/bff/post-logout`],
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token'],
    token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_basic',
    backchannel_logout_uri: `${base}/bff/backchannel-logout`,
    backchannel_logout_session_required: true,
    ...c.metadata,
  };
});

// Fresh signing keys on every start: an RSA key (RS256, the default ID token algorithm)
// and an EC key, so the relying party has to pick the key by kid.
function signingKey(type, opts, alg, kid) {
  const { privateKey } = generateKeyPairSync(type, opts);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid };
}
const jwks = {
  keys: [
    signingKey('rsa', { modulusLength: 2048 }, 'RS256', `rsa-${randomBytes(4).toString('hex')}`),
    signingKey('ec', { namedCurve: 'P-256' }, 'ES256', `ec-${randomBytes(4).toString('hex')}`),
  ],
};

const accessTokenTTL = Number(env('OP_ACCESS_TOKEN_TTL', '60'));
const refreshPolicy = env('OP_REFRESH_TOKENS', 'offline_access');
const rotate = env('OP_ROTATE_REFRESH_TOKEN', 'true');

const config = {
  clients,
  jwks,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  conformIdTokenClaims: env('OP_CONFORM_ID_TOKEN_CLAIMS', 'true') !== 'false',
  async findAccount(ctx, sub) {
    const given = sub.charAt(0).toUpperCase() + sub.slice(1);
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: `${sub}@example.com`,
          email_verified: true,
          name: `${given} Example`,
          given_name: given,
          family_name: 'Example',
        };
      },
    };
  },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    pushedAuthorizationRequests: {
      enabled: true,
      requirePushedAuthorizationRequests: env('OP_REQUIRE_PAR', 'false') === 'true',
    },
  },
  pkce: { required: () => true },
  ...(refreshPolicy === 'always'
    ? { issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token') }
    : {}),
  ...(rotate === 'true' ? { rotateRefreshToken: true } : {}),
  ttl: {
    AccessToken: () => accessTokenTTL,
    AuthorizationCode: () => 60,
    IdToken: () => 3600,
    RefreshToken: () => 24 * 3600,
    Interaction: () => 600,
    Session: () => 24 * 3600,
    Grant: () => 24 * 3600,
  },
  // oidc-provider refuses outgoing requests (back-channel logout) to special-use
  // addresses such as 127.0.0.1, as SSRF protection. The tests run the BFF on
  // loopback, so this test provider lets loopback through.
  fetch(url, options) {
    const { dispatcher, ...rest } = options;
    const { hostname } = new URL(url);
    const loopback = hostname === 'localhost' || hostname.startsWith('127.') || hostname === '[::1]';
    return globalThis.fetch(url, loopback ? rest : options);
  },
  // Error pages as JSON, so a test that lands on one shows oidc-provider's exact error.
  renderError(ctx, out, error) {
    ctx.type = 'json';
    ctx.body = { ...out, page: 'error' };
  },
};

const provider = new Provider(issuer, config);

const log = (event, data) => console.log(JSON.stringify({ t: new Date().toISOString(), event, ...data }));
provider.on('backchannel.success', (ctx, client, accountId, sid) => {
  log('backchannel.success', { client_id: client.clientId, sub: accountId, sid });
});
provider.on('backchannel.error', (ctx, err, client, accountId, sid) => {
  log('backchannel.error', { client_id: client.clientId, sub: accountId, sid, error: String(err) });
});
for (const name of ['server_error', 'grant.error', 'authorization.error', 'userinfo.error', 'jwks.error',
  'discovery.error', 'end_session.error', 'end_session_confirm.error', 'revocation.error',
  'introspection.error', 'pushed_authorization_request.error']) {
  provider.on(name, (ctx, err) => {
    log(name, { error: err.error || err.name, description: err.error_description || err.message });
  });
}
provider.on('grant.success', (ctx) => {
  log('grant.success', { grant_type: ctx.oidc.params.grant_type, client_id: ctx.oidc.client?.clientId });
});
provider.on('grant.revoked', (ctx, grantId) => {
  log('grant.revoked', { route: ctx.oidc.route, client_id: ctx.oidc.client?.clientId, grant_id: grantId });
});
provider.on('end_session.success', (ctx) => {
  log('end_session.success', { client_id: ctx.oidc.client?.clientId });
});

// Test control hook: a back-channel logout for a session, like the end_session flow sends.
provider.use(async (ctx, next) => {
  if (ctx.path === '/_control/backchannel-logout' && ctx.method === 'POST') {
    const { sub, sid, client_id: clientId } = Object.fromEntries(new URL(ctx.href).searchParams);
    const client = await provider.Client.find(clientId);
    if (!client || !sub) {
      ctx.status = 400;
      ctx.body = { error: 'give sub and a known client_id' };
      return;
    }
    try {
      await client.backchannelLogout(sub, sid);
      ctx.body = { delivered: true };
    } catch (err) {
      ctx.status = 502;
      ctx.body = { delivered: false, error: String(err) };
    }
    return;
  }
  await next();
});

const server = provider.listen(port, '127.0.0.1', () => {
  log('listening', { issuer, port, clients: clients.map((c) => c.client_id) });
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
