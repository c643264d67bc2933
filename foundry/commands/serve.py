"""`foundry serve TARGET` and `foundry bench-latency URL_OR_TARGET`.

serve checks TARGET and the served variants, binds the port, and only then imports ONNX
Runtime and the tokenizers to load the models, so that a mistake is reported at once.
"""

import json
import logging
import sys
from pathlib import Path

import typer

from foundry.reports import number, print_table
from foundry.serve.server import bind, start_server
from foundry.serve.target import open_site


def serve_command(target: Path, *, host: str, port: int, variant: str | None, model: str | None) -> None:
    site = open_site(target, model=model, variant=variant)
    for note in site.notes:
        typer.echo(f"warning: {note}", err=True)
    server = bind(site, host, port)
    try:
        typer.echo(f"loading {', '.join(f'{served.id} ({served.variant})' for served in site.models)} ...", err=True)
        server.load_models()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logging.getLogger("foundry.serve").addHandler(handler)
        logging.getLogger("foundry.serve").setLevel(logging.INFO)
        typer.echo(f"serving {target} at {server.url}/")
        typer.echo(f"OpenAI API at {server.url}/v1 with {', '.join(served.id for served in site.models)}; Ctrl-C stops")
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def bench_latency_command(url_or_target: str, *, model: str | None, requests: int, tokens: int, as_json: bool) -> None:
    from foundry.serve.latency import measure

    if url_or_target.startswith(("http://", "https://")):
        report = measure(url_or_target, model=model, requests=requests, tokens=tokens)
    else:
        server = start_server(Path(url_or_target), model=model)
        try:
            report = measure(server.url, model=model, requests=requests, tokens=tokens)
        finally:
            server.stop()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    rows = [[str(index), number(sample["first_token_s"] * 1000), str(sample["tokens"]), number(sample["total_s"]), number(sample["tokens_per_s"])]
            for index, sample in enumerate(report["samples"], 1)]
    summary = report["summary"]
    rows.append(["median", number(summary["first_token_median_s"] * 1000), number(summary["tokens_median"]), "", number(summary["tokens_per_s_median"])])
    print_table(f"{report['model']} at {report['url']} (streamed, greedy, {tokens} tokens; first token p90 {number(summary['first_token_p90_s'] * 1000)} ms)",
                ["request", "first token ms", "tokens", "total s", "tokens/s"], rows, right=[False, True, True, True, True])
