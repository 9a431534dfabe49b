# The BFF with the example SPA built in (docker-compose.yml also runs the sample API
# from this image: `python -m demo.sample_api`).
#   docker build -t bff .
#   docker run -p 8080:8080 -e BFF_ISSUER=... -e BFF_CLIENT_ID=... bff

FROM node:20.19.5-bookworm-slim AS spa
WORKDIR /spa
COPY spa-example/package.json spa-example/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY spa-example/ ./
RUN npm run build

FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY bff/ bff/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY --from=wheel /wheels /wheels
# The wheel built above, by its file: installing the name with --find-links would let a higher
# version of that name on the package index win. Its dependencies come pinned from the index.
RUN pip install /wheels/oidc_bff-*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home bff
COPY demo/ demo/
COPY --from=spa /spa/dist /app/spa
ENV BFF_HOST=0.0.0.0 \
    BFF_PORT=8080 \
    BFF_STATIC_DIR=/app/spa
USER bff
EXPOSE 8080
CMD ["python", "-m", "bff"]
