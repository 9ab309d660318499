# The Weijian platform image (used by docker-compose.yml as service "weijian").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# constraints.txt (pinned versions) is used when the repository has one.
COPY pyproject.toml README.md constraints.tx[t] ./
COPY weijian ./weijian
RUN if [ -f constraints.txt ]; then \
        pip install --constraint constraints.txt . ; \
    else \
        pip install . ; \
    fi \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin weijian

USER weijian
EXPOSE 8000
CMD ["weijian", "up"]
