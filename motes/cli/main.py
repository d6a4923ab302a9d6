"""The ``motes`` command; docs/cli.md lists every command with an example.

    motes serve [--data-dir PATH] [--http-port N] [--mqtt-port N] [--host ADDR] [--mqtt-url URL]
                [--config FILE]
    motes worker --mqtt-url URL [--data-dir PATH] [--config FILE]
    motes db upgrade [--data-dir PATH] [--registry-url URL] [--config FILE]
    motes version [--url URL]
    motes config create NAME [-u URL] [-t TOKEN] [-o ORG] [-a] | use NAME | list | delete NAME
    motes login --email E | logout | whoami
    motes buckets list | create NAME [--retention 30d] | delete NAME
    motes write -f FILE [--bucket B] [--precision ns|us|ms|s] [--format lp|csv] [--resume] ...
    motes query --bucket B --measurement M [--field F]... [--tag k=v]... [--start -1h] ...
    motes orgs list | create NAME [--owner-email E [--owner-password P]]
    motes users list | create EMAIL --role R | update ID ... | delete ID | reset-password ID
    motes devices list | create ID | show ID | update ID | delete ID | rotate-key ID
                  | revoke-key ID | import FILE.csv
    motes channels list | create ID | delete ID | connect CH DEV | disconnect CH DEV
                   | devices CH | publish CH [--subtopic S] (-f FILE | --data TEXT)
    motes tokens list | create [--read-bucket ID]... [--expires-in 30d] | update ID | delete ID
    motes secrets list | set KEY [--value V] | delete KEY

Client commands take ``--url``, ``--token``, ``--org`` and ``--profile``; each value comes
from its option, else its MOTES_* variable, else the profile (``--profile``, MOTES_PROFILE,
else the active one; see :mod:`motes.cli.profiles`), else the default. They print tables,
or the server's JSON with ``--json``; keys and tokens only once, when created. Failures are
``Error: <message>`` with exit code 1, never a traceback.

Tests may hand in a client factory as click's ``obj``:
``CliRunner().invoke(main, args, obj=functools.partial(MotesClient, sleep=waits.append))``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from motes import __version__
from motes.cli.accounts import orgs, secrets, tokens, users
from motes.cli.client import MotesClient, MotesError
from motes.cli.configs import config, login, logout, whoami
from motes.cli.csvconv import CsvOptions
from motes.cli.db import db, load_settings
from motes.cli.devices import channels, devices
from motes.cli.duration import duration_option
from motes.cli.options import (
    PROFILE_OPTION,
    URL_OPTION,
    client_factory,
    echo_json,
    json_option,
    target,
    with_client,
)
from motes.cli.output import format_buckets, format_query_tables
from motes.cli.write import Summary, WriteJob, detect_format, run_write


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="motes", message="%(prog)s %(version)s"
)
def main() -> None:
    """Motes: an open-source IoT data platform."""


_GROUPS = [config, login, logout, whoami, orgs, users, tokens, secrets, devices, channels, db]
for _group in _GROUPS:
    main.add_command(_group)


# -- serve / version --------------------------------------------------------------------------


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the telemetry store and registry.",
)
@click.option("--http-port", type=click.IntRange(0, 65535), help="Port of the HTTP API.")
@click.option("--mqtt-port", type=click.IntRange(0, 65535), help="Port of the MQTT listener.")
@click.option("--host", "http_host", metavar="ADDR", help="Address the HTTP API binds to.")
@click.option(
    "--mqtt-url",
    metavar="URL",
    help="Consume device traffic from this external broker (mqtt://user:token@host:1883).",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML settings file (options given here win over it).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    data_dir: Path | None,
    http_port: int | None,
    mqtt_port: int | None,
    http_host: str | None,
    mqtt_url: str | None,
    config: Path | None,
) -> None:
    """Run the Motes server until interrupted.

    Options left out come from the --config file, then MOTES_* environment variables,
    then defaults.
    """
    settings = load_settings(
        config,
        data_dir=data_dir,
        http_port=http_port,
        mqtt_port=mqtt_port,
        http_host=http_host,
        mqtt_url=mqtt_url,
    )
    # Imported here: the server pulls in DuckDB, Arrow and Starlette, which the client
    # commands do not need.
    from motes.server import serve as run_server

    ctx.exit(run_server(settings))


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the telemetry store and registry.",
)
@click.option(
    "--mqtt-url", metavar="URL", help="The external broker (mqtt://user:token@host:1883)."
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML settings file (options given here win over it).",
)
@click.pass_context
def worker(
    ctx: click.Context, data_dir: Path | None, mqtt_url: str | None, config: Path | None
) -> None:
    """Consume device traffic from an external broker into the store, without the HTTP API.

    Several workers (and servers) with the same MOTES_MQTT_SHARE_GROUP split the traffic.
    """
    settings = load_settings(config, data_dir=data_dir, mqtt_url=mqtt_url)
    if not settings.mqtt_url:
        raise click.UsageError("a worker needs --mqtt-url (or MOTES_MQTT_URL)")
    from motes.server import work

    ctx.exit(work(settings))


@main.command()
@URL_OPTION
@PROFILE_OPTION
def version(url: str | None, profile: str | None) -> None:
    """Print the versions of the CLI and of the server at --url."""
    click.echo(f"motes {__version__}")
    try:
        url = target(url, None, None, profile).url
        with client_factory()(url) as client:
            server_version = client.health().get("version")
    except MotesError as exc:
        click.echo(f"server: {exc}", err=True)  # not a failure: the CLI's version is printed
        return
    if server_version:
        click.echo(f"server {server_version} at {url}")


# -- buckets ----------------------------------------------------------------------------------


@main.group()
def buckets() -> None:
    """List, create and delete buckets."""


@buckets.command("list")
@json_option
@with_client
def list_buckets(client: MotesClient, as_json: bool) -> None:
    """List the buckets of the org."""
    found = client.list_buckets()
    if as_json:
        echo_json(found)
    else:
        click.echo(format_buckets(found))


@buckets.command("create")
@click.argument("name")
@click.option(
    "--retention",
    callback=duration_option,
    default="0",
    show_default=True,
    help="How long to keep data: 30d, 720h, 1h30m...; 0 keeps it forever.",
)
@json_option
@with_client
def create_bucket(client: MotesClient, name: str, retention: str, as_json: bool) -> None:
    """Create bucket NAME."""
    created = client.create_bucket(name, retention)
    if as_json:
        echo_json(created)
    else:
        click.echo(format_buckets([created]))


@buckets.command("delete")
@click.argument("name")
@with_client
def delete_bucket(client: MotesClient, name: str) -> None:
    """Delete bucket NAME and all of its data."""
    client.delete_bucket(name)
    click.echo(f"Bucket {name} deleted.")


# -- write ------------------------------------------------------------------------------------


@main.command()
@click.option(
    "-f",
    "--file",
    "file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
    help="Line protocol or CSV file; - reads standard input.",
)
@click.option(
    "--bucket",
    envvar="MOTES_BUCKET",
    show_envvar=True,
    required=True,
    help="Bucket to write to.",
)
@click.option(
    "--precision",
    type=click.Choice(["ns", "us", "ms", "s"]),
    default="ns",
    show_default=True,
    help="Unit of the timestamps.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["lp", "csv"]),
    help="Input format (default: csv for *.csv, else line protocol).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Lines per request.",
)
@click.option("--resume", is_flag=True, help="Continue after the last batch the server took.")
@click.option(
    "--errors-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Report of rejected lines (default: FILE.rejected).",
)
@click.option("--measurement", help="CSV: measurement of rows without a 'measurement' column.")
@click.option("--tag-column", multiple=True, help="CSV: a column holding a tag (repeatable).")
@click.option(
    "--integer-column", multiple=True, help="CSV: a numeric column stored as integers (repeatable)."
)
@with_client
def write(
    client: MotesClient,
    file: Path,
    bucket: str | None,
    precision: str,
    fmt: str | None,
    batch_size: int,
    resume: bool,
    errors_file: Path | None,
    measurement: str | None,
    tag_column: tuple[str, ...],
    integer_column: tuple[str, ...],
) -> None:
    """Write a line protocol or CSV file, in batches, resumably.

    Rejected lines go to FILE.rejected, each after a "# line N: why" comment; fix them
    there and write that file. Exit code 1 if any line was rejected.

    CSV: a header row; "time" (RFC 3339, or an integer in --precision), "measurement"
    (or --measurement), --tag-column columns as tags, other cells as fields.
    """
    path = None if str(file) == "-" else file
    job = WriteJob(
        path=path,
        fmt=detect_format(path, fmt),
        bucket=bucket,
        precision=precision,
        batch_size=batch_size,
        resume=resume,
        errors_path=errors_file,
        csv=CsvOptions(measurement, tag_column, integer_column, precision),
    )
    try:
        with _input(path) as stream, _progress_bar(path) as advance:
            summary = run_write(client, job, stream, advance=advance, notify=_note)
    except OSError as exc:  # the report or progress file cannot be written, say
        raise click.ClickException(f"{exc.strerror}: {exc.filename}") from exc
    _print_summary(summary, job.report_path)


def _print_summary(summary: Summary, report: Path) -> None:
    """Totals cover every run of a resumed write; exit code 1 if any line was rejected."""
    rate = f"{summary.points_per_second:,.0f} points/s"
    if summary.resumed_at is None:
        timing = f"in {summary.seconds:.1f}s: {rate}"
    else:
        timing = (
            f"in all; this run started at line {summary.resumed_at}: {summary.seconds:.1f}s, {rate}"
        )
    click.echo(f"Wrote {summary.written:,} lines ({summary.points:,} points) {timing}.")
    if summary.rejected:
        click.echo(
            f"Rejected {summary.rejected:,} lines, listed in {report}: fix them there"
            " and write that file (same options).",
            err=True,
        )
        click.get_current_context().exit(1)


def _note(text: str) -> None:
    click.echo(f"motes: {text}", err=True)


@contextlib.contextmanager
def _input(path: Path | None) -> Iterator[Any]:
    if path is None:
        yield click.get_binary_stream("stdin")
        return
    with path.open("rb") as stream:
        yield stream


@contextlib.contextmanager
def _progress_bar(path: Path | None) -> Iterator[Callable[[int], None]]:
    """A byte-count progress bar on stderr, if that is a terminal (logs need no bar)."""
    stderr = click.get_text_stream("stderr")
    if path is None or not stderr.isatty():  # stdin: no length to measure against
        yield lambda _: None
        return
    with click.progressbar(length=path.stat().st_size, label="Writing", file=stderr) as bar:
        yield bar.update


# -- query ------------------------------------------------------------------------------------


def _tag_filters(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    """``--tag k=v`` on the command line, ``tag=k:v`` on the wire."""
    filters = []
    for value in values:
        key, sep, tag_value = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", ctx, param)
        filters.append(f"{key}:{tag_value}")
    return filters


@main.command()
@click.option(
    "--bucket", envvar="MOTES_BUCKET", show_envvar=True, required=True, help="Bucket to read."
)
@click.option("--measurement", "-m", required=True, help="Measurement to read.")
@click.option("--field", "fields", multiple=True, help="Field to return (repeatable; default all).")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    callback=_tag_filters,
    metavar="KEY=VALUE",
    help="Only series with this tag value (repeatable).",
)
@click.option(
    "--start",
    default="-1h",
    show_default=True,
    help="Start: RFC 3339, epoch milliseconds, or relative to now (-1h, -7d).",
)
@click.option("--stop", help="Stop: like --start (default: now).")
@click.option("--every", help="Window for aggregation, e.g. 10m.")
@click.option("--fn", help="Aggregate per window: mean, min, max, sum, count, first, last, median.")
@click.option("--group-by", help="Tag keys to merge series by, comma-separated.")
@click.option("--fill", help="Empty windows: null, previous, linear, none, or a number.")
@click.option("--limit", type=click.IntRange(min=1), help="Rows per table at most.")
@click.option("--csv", "as_csv", is_flag=True, help="Ask the server for CSV and print it.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")
@with_client
def query(
    client: MotesClient,
    as_csv: bool,
    as_json: bool,
    fields: tuple[str, ...],
    tags: list[str],
    **single: str | int | None,
) -> None:
    """Query one measurement; print a table per series.

    \b
    motes query --bucket telemetry -m env --field temperature --every 10m --fn mean
    """
    if as_csv and as_json:
        raise click.UsageError("--csv and --json cannot be combined")
    # The single-valued options are named as the API's query parameters (group_by too).
    params = [(name, value) for name, value in single.items() if value is not None]
    params += [("field", f) for f in fields] + [("tag", t) for t in tags]
    if as_csv:
        click.echo(client.query_csv(params), nl=False)
        return
    answer = client.query_json(params)
    if as_json:
        echo_json(answer)
        return
    tables = answer.get("tables") or []
    click.echo("\n\n".join(format_query_tables(tables)) if tables else "No data.")


if __name__ == "__main__":  # `python -m motes.cli.main`, as the process tests start it
    main()
