# The exchange-kernel image: the worker by default; `setup` and `sim` with another command.
#   docker build -t exchange-kernel:0.2.0 .
#   docker run --rm -e TEMPORAL_ADDRESS=host:7233 -v ./accounts.toml:/config/accounts.toml:ro \
#     -e KEY_VAR=... -e SECRET_VAR=... exchange-kernel:0.2.0
# Pinned base image (Debian bookworm, CPython 3.11): bump the tag deliberately.
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed, unprivileged user: the kernel needs no root, and accounts files are mounted read-only.
RUN groupadd --system --gid 10001 ek \
    && useradd --system --uid 10001 --gid ek --home-dir /home/ek --create-home \
       --shell /usr/sbin/nologin ek

WORKDIR /opt/exchange-kernel
COPY pyproject.toml README.md ./
COPY exchange_kernel ./exchange_kernel
RUN pip install . && rm -rf /opt/exchange-kernel/build

USER ek
WORKDIR /home/ek

# The console script of pyproject.toml ([project.scripts]).
ENTRYPOINT ["exchange-kernel"]
CMD ["worker", "--accounts", "/config/accounts.toml"]
