"""The `foundry` command. Each command parses its flags and calls the library; no work here.

Imports of anything beyond typer happen inside the commands, so `foundry --help` stays
fast and the submitter never imports torch.
"""

import sys
from pathlib import Path

import click
import typer

from foundry import __version__
from foundry.errors import USER_ERROR_EXIT_CODE, UserError

app = typer.Typer(
    name="foundry",
    help="Turn model recipes into web-ready models: merge, fine-tune, evaluate, quantize, publish.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}

RecipeArg = typer.Argument(..., help="Recipe file (YAML).", show_default=False)
StoreOpt = typer.Option(None, "--store", help="Artifact store: a folder, file://PATH or s3://BUCKET/PREFIX. [env: FOUNDRY_STORE; default: ./.foundry/store]")
StrictHelp = "Refuse a fine-tune that does not fit the hardware its recipe declares, instead of warning."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"foundry {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for every error."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    _state["debug"] = debug


@app.command()
def lint(paths: list[Path] = typer.Argument(..., help="Recipe files, or folders of them.", show_default=False)) -> None:
    """Validate recipes without running anything; exit 2 if any is wrong."""
    from foundry.commands.lint import lint_paths

    raise typer.Exit(0 if lint_paths(paths) else USER_ERROR_EXIT_CODE)


@app.command()
def init(
    path: Path = typer.Argument(..., help="The recipe file to write (.yml).", show_default=False),
    models: list[str] = typer.Option(..., "--model", "-m", help="A registry alias (qwen3:1.7b), hub id or model folder; twice for a pair to merge.", show_default=False),
    force: bool = typer.Option(False, "--force", help="Overwrite the file if it exists."),
) -> None:
    """Write a commented starter recipe (merge, quantize, publish; fine-tune and evaluate to uncomment) that lints as written."""
    from foundry.registry.load import load_registry
    from foundry.starter import write_starter

    written = write_starter(path, models, load_registry(), force=force)
    typer.echo(f"wrote {written}; next: foundry lint {written}, then foundry run {written}")


@app.command()
def schema(output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of standard output.")) -> None:
    """Print the recipe's JSON Schema, for editors' completion and validation."""
    from foundry.commands.lint import recipe_json_schema

    text = recipe_json_schema()
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n")


@app.command()
def plan(recipe: Path = RecipeArg, store: str | None = StoreOpt, strict: bool = typer.Option(False, "--strict", help=StrictHelp)) -> None:
    """Show the stages a recipe makes, their keys, and which are already committed."""
    from foundry.commands.run import show_plan

    show_plan(recipe, store, strict=strict)


@app.command()
def run(
    recipe: Path = RecipeArg,
    store: str | None = StoreOpt,
    runs_dir: Path = typer.Option(Path(".foundry/runs"), "--runs-dir", help="Where each run keeps its stage specs and logs."),
    force: bool = typer.Option(False, "--force", help="Redo the selected stages even when committed."),
    only: str | None = typer.Option(None, "--only", help="Run just this stage (its inputs must be committed)."),
    until: str | None = typer.Option(None, "--until", help="Run the stages up to and including this one."),
    strict: bool = typer.Option(False, "--strict", help=StrictHelp),
) -> None:
    """Run a recipe's stages on this machine, skipping what is already committed."""
    from foundry.commands.run import run_recipe

    raise typer.Exit(run_recipe(recipe, store, runs_dir, force=force, only=only, until=until, strict=strict))


@app.command()
def sweep(
    recipe: Path = RecipeArg,
    store: str | None = StoreOpt,
    runs_dir: Path = typer.Option(Path(".foundry/runs"), "--runs-dir", help="Where the sweep keeps its stage specs, logs and report (sweep.json, sweep.md, sweep.png)."),
    force: bool = typer.Option(False, "--force", help="Redo every stage even when committed (a stage the points share runs once)."),
    plan_only: bool = typer.Option(False, "--plan", help="Only list each point's stages: committed, to run, shared, or for the winner only."),
    strict: bool = typer.Option(False, "--strict", help=StrictHelp),
) -> None:
    """Run every point of a recipe's sweep.grid up to its evaluation, sharing common stages; quantize and publish the best by sweep.select."""
    from foundry.commands.sweep import sweep_recipe

    raise typer.Exit(sweep_recipe(recipe, store, runs_dir, force=force, strict=strict, plan_only=plan_only))


@app.command()
def verify(
    target: str | None = typer.Argument(None, help="A published model folder, a stage key folder, or RECIPE/KEY in the store. [default: every key of the store]", show_default=False),
    store: str | None = StoreOpt,
    repair: bool = typer.Option(False, "--repair", help="Delete each damaged or broken key from the store, so that the next run rebuilds it."),
) -> None:
    """Re-hash every file of a published model or stage key; name what is missing or corrupted."""
    from foundry.commands.verify import verify_target

    raise typer.Exit(0 if verify_target(target, store, repair=repair) else 1)


@app.command()
def gc(
    store: str | None = StoreOpt,
    recipes: Path = typer.Option(Path("recipes"), "--recipes", help="The recipes whose planned keys are kept."),
    older_than: str = typer.Option("1d", "--older-than", help="Only collect what is at least this old (30m, 6h, 2d, 0): younger things may belong to a run in flight."),
    yes: bool = typer.Option(False, "--yes", help="Delete; without it, only list what would be deleted."),
) -> None:
    """List (or, with --yes, delete) crash leftovers and keys no recipe plans and no catalogue lists."""
    from foundry.commands.artifacts import collect_garbage

    raise typer.Exit(collect_garbage(store, recipes, older_than, yes))


artifacts_app = typer.Typer(help="The store's committed keys.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")


@artifacts_app.command("ls")
def artifacts_ls(recipe: str | None = typer.Argument(None, help="Only this recipe's keys.", show_default=False), store: str | None = StoreOpt) -> None:
    """A table of committed keys: recipe, stage, key, size, when committed."""
    from foundry.commands.artifacts import list_artifacts

    list_artifacts(recipe, store)


@app.command()
def render(
    paths: list[Path] = typer.Argument(..., help="Recipe files, or folders of them.", show_default=False),
    values: list[Path] = typer.Option([], "--values", "-f", help="A values file for the chart (charts/foundry); repeat for more, later files win."),
    sets: list[str] = typer.Option([], "--set", help="A chart value as KEY=VALUE, parsed as helm --set parses it; repeat for more; wins over -f."),
    namespace: str = typer.Option("default", "--namespace", "-n", help="The namespace the objects are rendered for."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write <recipe>.yaml per recipe into this folder (for GitOps) instead of printing."),
    cron: str | None = typer.Option(None, "--cron", help="Render a CronJob that runs the recipe (its sweep grid, if any) on this schedule, e.g. \"0 2 * * *\"."),
    time_zone: str | None = typer.Option(None, "--time-zone", help="The CronJob's IANA time zone, e.g. Europe/Paris. [default: Etc/UTC]"),
) -> None:
    """Print the Kubernetes objects `foundry submit` would apply, rendered by Helm from the chart."""
    from foundry.commands.render import render_command

    render_command(paths, values, sets, namespace=namespace, output=output, cron=cron, time_zone=time_zone)


NamespaceOpt = typer.Option(None, "--namespace", "-n", help="Kubernetes namespace. [default: the kubeconfig context's, else default]")
ContextOpt = typer.Option(None, "--context", help="kubeconfig context. [default: the current one]")
RunArg = typer.Argument(..., help="The run's id: its driver Job's name (see `foundry runs`).", show_default=False)
ClusterStoreOpt = typer.Option(None, "--store", help="The store to read run status from when the cluster cannot be reached (and to override the plan's). [env: FOUNDRY_STORE]")


@app.command()
def submit(
    recipe: Path = RecipeArg,
    values: list[Path] = typer.Option([], "--values", "-f", help="A values file for the chart; repeat for more, later files win."),
    sets: list[str] = typer.Option([], "--set", help="A chart value as KEY=VALUE (e.g. store.url=s3://bucket/foundry); repeat for more."),
    namespace: str | None = NamespaceOpt,
    context: str | None = ContextOpt,
    dry_run: str | None = typer.Option(None, "--dry-run", help="client: print what would be applied, send nothing; server: the API server checks everything and changes nothing."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run until it ends; exit 0 if it succeeded, 1 if not."),
) -> None:
    """Run a recipe on Kubernetes: render it and server-side apply its driver Job, ConfigMap and RBAC."""
    from foundry.commands.submit import submit_recipe

    raise typer.Exit(submit_recipe(recipe, values, sets, namespace=namespace, context=context, dry_run=dry_run, wait=wait))


@app.command()
def schedule(
    recipe: Path = RecipeArg,
    cron: str = typer.Option(..., "--cron", help="When to run, as five cron fields or a macro, e.g. \"0 2 * * *\" or @daily.", show_default=False),
    time_zone: str | None = typer.Option(None, "--time-zone", help="The CronJob's IANA time zone, e.g. Europe/Paris. [default: Etc/UTC]"),
    values: list[Path] = typer.Option([], "--values", "-f", help="A values file for the chart; repeat for more, later files win."),
    sets: list[str] = typer.Option([], "--set", help="A chart value as KEY=VALUE; repeat for more."),
    namespace: str | None = NamespaceOpt,
    context: str | None = ContextOpt,
    dry_run: str | None = typer.Option(None, "--dry-run", help="client or server, as for submit."),
) -> None:
    """Run a recipe (its sweep grid, if it has one) on a schedule: apply its CronJob; re-scheduling updates it."""
    from foundry.commands.submit import schedule_recipe

    raise typer.Exit(schedule_recipe(recipe, values, sets, cron=cron, time_zone=time_zone, namespace=namespace, context=context, dry_run=dry_run))


@app.command()
def status(
    run: str | None = typer.Argument(None, help="The run's id. [default: the newest run]", show_default=False),
    store: str | None = ClusterStoreOpt,
    namespace: str | None = NamespaceOpt,
    context: str | None = ContextOpt,
) -> None:
    """A cluster run's stages: state, time, pod, why one failed; from the cluster, else from the store."""
    from foundry.commands.status import show_status

    raise typer.Exit(show_status(run, store, namespace, context))


@app.command()
def logs(
    run: str = RunArg,
    stage: str | None = typer.Option(None, "--stage", "-s", help="A stage (merge, quantize, ...) or its key. [default: the driver's log]"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the pod ends."),
    namespace: str | None = NamespaceOpt,
    context: str | None = ContextOpt,
) -> None:
    """Print the log of a run's driver, or of one of its stages (its latest pod)."""
    from foundry.commands.status import show_logs

    raise typer.Exit(show_logs(run, stage, follow, namespace, context))


@app.command()
def cancel(run: str = RunArg, store: str | None = ClusterStoreOpt, namespace: str | None = NamespaceOpt, context: str | None = ContextOpt) -> None:
    """Stop a run: delete its driver and stage Jobs (and their pods) and mark it cancelled in the store."""
    from foundry.commands.status import cancel_run

    raise typer.Exit(cancel_run(run, store, namespace, context))


@app.command()
def runs(
    store: str | None = ClusterStoreOpt,
    namespace: str | None = NamespaceOpt,
    context: str | None = ContextOpt,
    limit: int = typer.Option(20, "--limit", help="Show at most this many."),
) -> None:
    """Recent cluster runs, newest first; from the cluster, else from the store."""
    from foundry.commands.status import show_runs

    raise typer.Exit(show_runs(store, namespace, context, limit))


models_app = typer.Typer(help="The model registry: presets, memory estimates, the model that fits.", no_args_is_help=True)
app.add_typer(models_app, name="models")
TaskOpt = typer.Option(None, "--task", help="chat, code, completion, reasoning, multilingual (or test: the tiny: models).")
VramOpt = typer.Option(None, "--vram", help="GPU memory in GiB (what a GPU's \"8 GB\" means).")
RamOpt = typer.Option(None, "--ram", help="RAM in GiB, to train on a CPU.")
DetectOpt = typer.Option(False, "--detect", help="Read this machine's largest GPU (nvidia-smi), else its RAM.")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
WebOpt = typer.Option(False, "--web", help="Only models whose published graphs are proven in transformers.js.")
CpuOpt = typer.Option(False, "--cpu", help="Train on a CPU: only models that train at a bearable speed there, judged against the RAM (--ram, else this machine's).")


@models_app.command("list")
def models_list(
    task: str | None = TaskOpt,
    fits: bool = typer.Option(False, "--fits", help="Only models that fit (--vram/--ram, else this machine)."),
    vram: float | None = VramOpt,
    ram: float | None = RamOpt,
    web: bool = WebOpt,
    cpu: bool = CpuOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The models the registry knows: size, tasks, licence, memory, quality, speed, web."""
    from foundry.commands.models import hardware_from_flags, list_models

    list_models(task, fits, hardware_from_flags(vram, ram, False, cpu=cpu), as_json, web=web, cpu=cpu)


@models_app.command("show")
def models_show(alias: str = typer.Argument(..., help="A registry alias (qwen2.5:1.5b) or hub id.", show_default=False), as_json: bool = JsonOpt) -> None:
    """One model: its preset, memory estimates for inference, LoRA, QLoRA and full training, and access."""
    from foundry.commands.models import show_model

    show_model(alias, as_json)


@models_app.command("select")
def models_select(
    task: str = typer.Option(..., "--task", help="chat, code, completion, reasoning, multilingual.", show_default=False),
    vram: float | None = VramOpt,
    ram: float | None = RamOpt,
    detect: bool = DetectOpt,
    web: bool = WebOpt,
    cpu: bool = CpuOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The best model for a task that fits the memory given (or detected), each candidate with why it ranks there; the alias on stdout."""
    from foundry.commands.models import hardware_from_flags, select_model

    select_model(task, hardware_from_flags(vram, ram, detect, cpu=cpu), as_json, web=web)


data_app = typer.Typer(help="Fine-tuning datasets: check and split them.", no_args_is_help=True)
app.add_typer(data_app, name="data")
DatasetArg = typer.Argument(..., help="A JSONL, JSON or CSV dataset (a path or s3://...).", show_default=False)


@data_app.command("check")
def data_check(dataset: str = DatasetArg) -> None:
    """Read every row; name the file and line of the first bad one."""
    from foundry.commands.data import check_dataset

    check_dataset(dataset)


@data_app.command("split")
def data_split(
    dataset: str = DatasetArg,
    validation: float = typer.Option(0.1, "--validation", help="Share of rows for validation."),
    test: float = typer.Option(0.1, "--test", help="Share of rows for the test set."),
    seed: int = typer.Option(0, "--seed", help="The shuffle's seed (the finetune stage's split.seed)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the three files. [default: beside DATASET]"),
) -> None:
    """Write DATASET's train, validation and test files, split as the finetune stage splits it."""
    from foundry.commands.data import split_dataset

    split_dataset(dataset, validation, test, seed, out)


@app.command()
def evaluate(
    target: str = typer.Argument(..., help="A model folder, RECIPE/KEY in the store, a published variant folder, tiny:NAME or a hub id.", show_default=False),
    suites: list[str] = typer.Option(..., "--suite", help="arc_easy, arc_challenge, hellaswag, or a JSONL file (path or s3://); repeat for more.", show_default=False),
    variant: str | None = typer.Option(None, "--variant", help="Score this ONNX variant (fp32, fp16, q8, q4, q2) with ONNX Runtime."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N items of each suite."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Sequences per forward pass (multiple choice)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="The longest answer a generation suite waits for."),
    out: Path | None = typer.Option(None, "--out", help="Write metrics.json (per-item results included) here."),
    store: str | None = StoreOpt,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """Score a model on evaluation suites (log-likelihood multiple choice, generation) and print the metrics."""
    from foundry.commands.evaluate import evaluate_target

    evaluate_target(target, suites, variant=variant, limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens, out=out, store_flag=store, trust_remote_code=trust_remote_code)


@app.command()
def query(
    model: str = typer.Argument(..., help="A model folder, RECIPE/KEY in the store, a published variant folder, tiny:NAME or a hub id.", show_default=False),
    prompt: str = typer.Argument(..., help="The question; it goes through the model's chat template.", show_default=False),
    variant: str | None = typer.Option(None, "--variant", help="Run this ONNX variant (fp32, fp16, q8, q4, q2) with ONNX Runtime."),
    system: str | None = typer.Option(None, "--system", help="A system message."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Stop after this many tokens."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as plain text, without the chat template."),
    store: str | None = StoreOpt,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """Generate one answer (greedy) from a model, for a quick look at a result."""
    from foundry.commands.query import query_model

    query_model(model, prompt, variant=variant, system=system, max_new_tokens=max_new_tokens, raw=raw, store_flag=store, trust_remote_code=trust_remote_code)


OutOpt = typer.Option(Path("."), "--out", help="The folder the report files go to.")


@app.command()
def compare(
    inputs: list[str] = typer.Argument(..., help="Two or more: metrics.json files, evaluate key folders, RECIPE/evaluate-KEY in the store, run folders or run ids.", show_default=False),
    out: Path = OutOpt,
    metrics: list[str] = typer.Option([], "--metric", help="Only this metric (arc_easy.acc_norm) or pattern (arc_easy.*); repeat for more."),
    store: str | None = StoreOpt,
) -> None:
    """Evaluation results side by side: the winner per metric and deltas; writes compare.json, .md and .png."""
    from foundry.commands.compare import compare_command

    compare_command(inputs, out, metrics, store)


@app.command("bench-variants")
def bench_variants(
    target: str = typer.Argument(..., help="A published model folder, a quantize key folder, or RECIPE/quantize-KEY in the store.", show_default=False),
    suites: list[str] = typer.Option([], "--suite", help="Score each variant on this suite (arc_easy, ..., or a JSONL file); repeat for more. [default: next-token agreement]"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Score only the first N items of each suite."),
    tokens: int = typer.Option(32, "--tokens", min=1, help="Tokens generated per prompt to measure speed."),
    out: Path = OutOpt,
    store: str | None = StoreOpt,
) -> None:
    """Each ONNX variant's size, load time, tokens per second and quality against fp32; writes bench-variants.json, .md and .png."""
    from foundry.commands.bench_variants import bench_variants_command

    bench_variants_command(target, suites, limit, tokens, out, store)


@app.command()
def serve(
    target: Path = typer.Argument(..., help="A publish folder (publish.to, holding models.json) or one published model folder.", show_default=False),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    variant: str | None = typer.Option(None, "--variant", help="The variant the API runs (fp32, fp16, q8, q4, q2). [default: each model's default, q4 when published]"),
    model: str | None = typer.Option(None, "--model", help="Serve only this model (its id or catalogue key)."),
) -> None:
    """Serve published models on localhost: their files for browsers, and an OpenAI-compatible API (/v1) run by ONNX Runtime."""
    from foundry.commands.serve import serve_command

    serve_command(target, host=host, port=port, variant=variant, model=model)


@app.command("bench-latency")
def bench_latency(
    url_or_target: str = typer.Argument(..., help="A running server's URL (http://127.0.0.1:8000), or a folder `foundry serve` takes (a server is started on it).", show_default=False),
    model: str | None = typer.Option(None, "--model", help="The model to ask. [default: the first the server lists]"),
    requests: int = typer.Option(5, "--requests", min=1, help="Timed requests, after one warm-up request."),
    tokens: int = typer.Option(64, "--tokens", min=1, help="Tokens generated per request."),
    as_json: bool = JsonOpt,
) -> None:
    """First-token latency and tokens per second of streamed, greedy chat completions against an OpenAI-compatible server."""
    from foundry.commands.serve import bench_latency_command

    bench_latency_command(url_or_target, model=model, requests=requests, tokens=tokens, as_json=as_json)


def main() -> None:
    """Entry point: user errors become one line and exit code 2, unless --debug."""
    try:
        code = app(standalone_mode=False)
    except UserError as error:
        if _state["debug"] or "--debug" in sys.argv:
            raise
        for line in error.lines():
            typer.echo(f"error: {line}", err=True)
        sys.exit(USER_ERROR_EXIT_CODE)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
