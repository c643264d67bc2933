"""A sweep: one recipe, a grid of values, every point run up to its evaluation, the best published.

    plan.py      the grid expanded into one plain recipe per point, each validated
    sequence.py  how a sweep runs, whoever runs it: the exploration, the selection, the winner
    local.py     `foundry sweep`: the points as local stage subprocesses
    report.py    sweep.json, sweep.md and sweep.png

The in-cluster executor is jobs/driver.py (`--sweep`), which takes its steps from sequence.py
too, so both run a sweep the same way.
"""
