"""``sieve sql | publish | pricing | analytics | dashboard``: thin adapters over the core.

Each command builds :class:`streams.settings.Settings` once and passes plain values (data
root, privacy budget, grace, price plan file) to the pure functions; the clock is read
here, never below.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

import click
import duckdb
from rich.console import Console

from aggregations.catalog import ROLES, Role
from aggregations.render import FORMATS, Format, render, render_invoice, table_rows
from streams.settings import Settings, reads_settings

_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="Output: a table for people, csv or json for programs.",
)


def _settings() -> Settings:
    # mypy (without the pydantic plugin) does not see that every field has a default.
    return Settings()


def _console() -> Console:
    # Piped output is not cut to 80 columns: tables keep their full values.
    console = Console()
    return console if console.is_terminal else Console(width=100_000)


def _catalog(data_root: str, role: Role = "billing") -> duckdb.DuckDBPyConnection:
    """The locked-down catalog of ``role``; pricing, the caller with no role, reads exact
    metering (billing)."""
    from aggregations.sandbox import open_sandbox

    return open_sandbox(data_root, role)


_ROLE = click.option(
    "--role",
    type=click.Choice(ROLES),
    default="analyst",
    show_default=True,
    help="analyst: the differentially private analytics; billing: exact per-account metering.",
)


@reads_settings("data_root")
@click.command("sql")
@click.argument("query")
@_ROLE
@_FORMAT
def sql_command(query: str, role: Role, fmt: Format) -> None:
    """Run one read-only QUERY over the published datasets of a role. Reads SIEVE_DATA_ROOT.

    analyst (default): analytics_daily, analytics_hourly, analytics_cells (differentially
    private; every count with its noise sd and 95 % interval). billing: metering_hourly,
    metering_daily, metering_corrections (exact, per account). Only queries run (no COPY,
    ATTACH, CREATE, SET, INSTALL ...), and only the role's folders under published/ can be
    read: facts, identifiable data, commit markers, the privacy ledger and the other role's
    files are out of reach.
    """
    from aggregations.sandbox import SandboxError, run_query

    connection = _catalog(_settings().data_root, role)
    try:
        relation = run_query(connection, query)
    except SandboxError as error:
        raise click.ClickException(f"refused: {error}") from None
    except duckdb.Error as error:
        raise click.ClickException(f"query failed: {error}") from None
    if relation is None:
        return
    columns, rows = relation.columns, [list(r) for r in relation.fetchall()]
    render(columns, rows, fmt, _console())


@reads_settings(
    "data_root",
    "grace_period",
    "dp_epsilon",
    "dp_delta",
    "dp_late_batches",
    "dp_late_share",
    "dp_late_interval",
    "dp_max_events_per_person_day",
    "dp_userless_unit",
    "meters_file",
    "publish_memory_mb",
)
@click.command("publish")
@click.option(
    "--catalog/--no-catalog",
    default=True,
    show_default=True,
    help="Also (re)write the catalog files <data root>/catalog-analyst.duckdb and"
    " catalog-billing.duckdb.",
)
@click.option(
    "--close-through",
    "close_through",
    type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%d"]),
    default=None,
    help="UTC instant up to which the input is complete: windows ending by then close even"
    " if no later events came (e.g. 2026-11-01 to invoice October on a quiet stream).",
)
def publish_command(catalog: bool, close_through: datetime | None) -> None:
    """Publish exact metering and differentially private analytics for every closed window.

    Reads SIEVE_DATA_ROOT, SIEVE_GRACE_PERIOD, SIEVE_METERS_FILE, SIEVE_PUBLISH_MEMORY_MB
    and the SIEVE_DP_* budget. Incremental: a run reads the facts committed since the last
    one (and the days it meters again); running it again with no new facts writes nothing
    and spends nothing; a batch over a day's budget is refused and reported (exit status
    1), never published.
    """
    from aggregations.analytics import privacy_of
    from aggregations.catalog import default_catalog_path, open_catalog
    from aggregations.meters import load_meters
    from aggregations.publish import publish
    from aggregations.storage import resolve_root

    settings = _settings()
    started = time.perf_counter()
    report = publish(
        settings.data_root,
        datetime.now(UTC),
        settings.grace_period,
        privacy_of(settings),
        close_through=close_through.replace(tzinfo=UTC) if close_through else None,
        meters=load_meters(settings.meters_file),
        memory_limit_mb=settings.publish_memory_mb,
    )
    seconds = time.perf_counter() - started
    click.echo(
        f"watermark {report.watermark.isoformat() if report.watermark else '-'}:"
        f" {report.facts:,} new facts, {report.facts_read:,} read (days metered again"
        f" included) in {seconds:.2f}s"
    )
    if report.remetered:
        click.echo(f"meters new or changed, metered over every day: {', '.join(report.remetered)}")
    click.echo(
        f"metering hourly: {report.hourly_base} new, {report.hourly_corrections} corrections;"
        f" daily: {report.daily_base} new, {report.daily_corrections} corrections"
    )
    click.echo(
        f"analytics: {report.analytics_batches} batches, {report.analytics_rows} cells"
        + (
            f", {report.analytics_restored} restored from the ledger"
            if report.analytics_restored
            else ""
        )
    )
    if report.analytics_spent:
        top = max(epsilon for _, _, epsilon in report.analytics_spent)
        click.echo(
            f"privacy: epsilon per person-day spent up to {top:.3g} of {settings.dp_epsilon:g}"
            f" (delta {settings.dp_delta:g}); ledger: <data root>/_privacy/ledger"
        )
    if report.waiting_days:
        days = ", ".join(d.isoformat() for d in report.waiting_days)
        click.echo(f"late facts waiting for their day's next batch: {days}")
    if report.unreleased_facts:
        click.echo(
            f"{report.unreleased_facts} facts came after their day's last analytics batch:"
            " in metering, never in analytics (the day's budget is spent)"
        )
    for refusal in report.analytics_refused:
        click.echo(f"REFUSED {refusal.day} batch {refusal.batch}: {refusal.reason}", err=True)
    if report.run_id is None:
        click.echo("nothing new to publish")
    if catalog and resolve_root(settings.data_root).is_local:
        for role in ROLES:
            path = default_catalog_path(settings.data_root, role)
            try:
                open_catalog(settings.data_root, path, role=role).close()
                click.echo(f"catalog ({role}): {path}")
            except duckdb.IOException as error:  # someone holds the file open
                stale = (
                    "its metering views list the previous run's files until it is (sieve sql"
                    " always reads the latest)"
                    if role == "billing"
                    else "its views read new files anyway"
                )
                click.echo(f"catalog ({role}) not refreshed ({error}): {stale}")
    if report.analytics_refused:
        raise SystemExit(1)


@reads_settings("data_root", "grace_period", "price_plan_file", "meters_file")
@click.command("pricing")
@click.option("--period", required=True, help="The month to invoice, YYYY-MM.")
@click.option("--account", default=None, help="Only this account id.")
@click.option(
    "--draft",
    is_flag=True,
    help="Price a month that is not closed yet (its later days are missing); every format"
    " marks the invoice as a draft.",
)
@_FORMAT
def pricing_command(period: str, account: str | None, draft: bool, fmt: Format) -> None:
    """The invoice of a month, per account, from exact metering: each line with its unit,
    the use and the allowance in those units, the price and the amount; the totals and the
    currency in every format.

    A month is invoiced once it is closed (its last day's metering is published); before,
    the command fails with exit code 3 unless --draft. An unknown account, or a month with
    no metering, fails with exit code 4. Reads SIEVE_DATA_ROOT, SIEVE_PRICE_PLAN_FILE (the
    packaged plan if unset), SIEVE_METERS_FILE (the invoice units) and SIEVE_GRACE_PERIOD.
    """
    from aggregations.meters import load_meters
    from aggregations.pricing import load_plan, period_bounds, price_period, published_watermark

    settings = _settings()
    try:
        period_bounds(period)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--period") from None
    plan = load_plan(settings.price_plan_file, load_meters(settings.meters_file))
    bill = price_period(
        _catalog(settings.data_root),
        plan,
        period,
        watermark=published_watermark(settings.data_root),
        grace=settings.grace_period,
        account_id=account,
        draft=draft,
    )
    render_invoice(bill, fmt, _console())


@reads_settings("data_root")
@click.command("analytics")
@click.argument("report", required=False)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="First day (default: 30 days before --until).",
)
@click.option(
    "--until",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Last day, inclusive (default: today, UTC).",
)
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@_FORMAT
def analytics_command(
    report: str | None, since: datetime | None, until: datetime | None, limit: int, fmt: Format
) -> None:
    """Ready-made reports over the differentially private analytics (analyst role), every
    count with its 95 % interval; without REPORT, list them. Reads SIEVE_DATA_ROOT."""
    from aggregations.reports import REPORTS, run_report

    if report is None:
        render(
            ["report", "description"],
            [[r.name, r.description] for r in REPORTS.values()],
            fmt,
            _console(),
        )
        return
    if report not in REPORTS:
        raise click.BadParameter(
            f"unknown report {report!r}; one of: {', '.join(REPORTS)}", param_hint="REPORT"
        )
    last: date = until.date() if until else datetime.now(UTC).date()
    first: date = since.date() if since else last - timedelta(days=30)
    try:
        table = run_report(_catalog(_settings().data_root, "analyst"), report, first, last, limit)
    except duckdb.Error as error:
        raise click.ClickException(f"report {report} failed: {error}") from None
    columns, rows = table_rows(table)
    render(columns, rows, fmt, _console(), title=f"{report} {first} .. {last}")


@reads_settings("data_root", "grace_period", "dp_epsilon")
@click.command("dashboard")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where to write the page [default: <data root>/dashboard.html].",
)
@click.option(
    "--serve", is_flag=True, help="Then serve the page over HTTP, rebuilt on every request to /."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address --serve binds.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8050,
    show_default=True,
    help="Port --serve binds (0: any free port).",
)
@_ROLE
@click.option(
    "--account", default=None, help="Billing role: usage, bandwidth and sessions of this account."
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="First day shown (default: the first day of the last closed month).",
)
@click.option(
    "--until",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Last day shown, inclusive (default: the last day of the last closed month).",
)
def dashboard_command(
    out: str | None,
    serve: bool,
    host: str,
    port: int,
    role: Role,
    account: str | None,
    since: datetime | None,
    until: datetime | None,
) -> None:
    """Write a dashboard: one self-contained HTML page (it opens with no network) of charts
    over one role's published views, for the days --since to --until (by default the last
    closed month; every day if that month has no data). analyst (default): the
    differentially private analytics with their 95 % intervals, in dashboard.html. billing:
    exact per-account usage from metering, in billing.html; an --account with no metering
    is an error (exit code 4). Reads SIEVE_DATA_ROOT, SIEVE_GRACE_PERIOD and
    SIEVE_DP_EPSILON.
    """
    import asyncio
    from pathlib import Path

    from aggregations import dashboard
    from aggregations.pricing import published_watermark

    if account is not None and role != "billing":
        raise click.BadParameter(
            "the analytics have no account dimension; per-account usage is billing data:"
            " add --role billing",
            param_hint="--account",
        )
    settings = _settings()
    first = since.date() if since else None
    last = until.date() if until else None
    try:
        dashboard.default_span(None, settings.grace_period, first, last)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--since") from None

    def build() -> str:
        # The clock and the watermark are read here, at the edge; the page only shows them.
        mark = published_watermark(settings.data_root)
        chosen = first is not None or last is not None
        return dashboard.build_dashboard(
            settings.data_root,
            role=role,
            account=account,
            epsilon=settings.dp_epsilon,
            generated_at=datetime.now(UTC),
            span=dashboard.default_span(mark, settings.grace_period, first, last)
            if chosen
            else None,
            watermark=mark,
            grace=settings.grace_period,
        )

    path = Path(out) if out is not None else dashboard.default_output(settings.data_root, role)
    dashboard.write_page(path, build())
    click.echo(f"dashboard: {path}")
    if serve:

        def announce(urls: list[str]) -> None:
            click.echo(
                f"serving the dashboard at {', '.join(urls)} (rebuilt per request); Ctrl+C stops"
            )

        asyncio.run(dashboard.serve(dashboard.create_app(build), host, port, announce))


__all__ = [
    "analytics_command",
    "dashboard_command",
    "pricing_command",
    "publish_command",
    "sql_command",
]
