"""Browser-facing defences: cookies, CSRF, redirect targets."""
