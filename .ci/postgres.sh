#!/usr/bin/env bash
# Start a PostgreSQL server on loopback for the MLflow-server test and print its URI.
# Installs Debian's postgresql when it is missing. Prints nothing (and exits 0) if it cannot.
set -u
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 || exit 0
fi
version=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)
[ -n "$version" ] || exit 0
pg_lsclusters -h 2>/dev/null | grep -q "^$version main" || pg_createcluster "$version" main >/dev/null 2>&1 || exit 0
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 1 30); do
  runuser -u postgres -- psql -qAt -h 127.0.0.1 -c "select 1" >/dev/null 2>&1 && break
  runuser -u postgres -- psql -qAt -c "select 1" >/dev/null 2>&1 && break
  sleep 1
done
runuser -u postgres -- psql -qAt -c "select 1" >/dev/null 2>&1 || exit 0
runuser -u postgres -- psql -qAt -c "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='bench_ci') THEN CREATE ROLE bench_ci LOGIN PASSWORD 'bench_ci'; END IF; END\$\$;" >/dev/null 2>&1
runuser -u postgres -- psql -qAt -c "DROP DATABASE IF EXISTS bench_ci_mlflow" >/dev/null 2>&1
runuser -u postgres -- psql -qAt -c "CREATE DATABASE bench_ci_mlflow OWNER bench_ci" >/dev/null 2>&1 || exit 0
port=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $3}')
echo "postgresql+psycopg2://bench_ci:bench_ci@127.0.0.1:${port:-5432}/bench_ci_mlflow"
