import { defineConfig } from "vite";

// The built app (dist/) is served by the BFF itself (BFF_STATIC_DIR), same origin as
// /bff and /api, so the browser only ever holds the BFF's HttpOnly session cookie.
// `npm run dev` proxies /bff and /api to a BFF on :8080 for working on the UI; sign-in
// then needs the BFF's public URL to be the dev server's origin.
export default defineConfig({
  build: {
    outDir: "dist",
    sourcemap: false,
    // No inline scripts or modulepreload polyfill snippets: the BFF's CSP is script-src 'self'.
    modulePreload: { polyfill: false },
  },
  server: {
    port: 5173,
    proxy: {
      "/bff": "http://localhost:8080",
      "/api": "http://localhost:8080",
    },
  },
});
