"""Server-side sessions: models, the store contract, the memory and Redis stores."""
