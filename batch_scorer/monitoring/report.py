"""The monitoring report: one self-contained HTML file for a fleet of jobs.

Everything is inline (CSS in a ``<style>``, charts as base64 PNG ``data:`` URIs, no
script), so the file opens offline, from a mail attachment or a file share, and
refers to nothing outside itself. First a table of every job, then per job: a
header (job, model version, last run and its status, the features whose latest PSI
alerts or warns), the charts (rows per run, score distribution against the
reference, a PSI heatmap, one chart per metric) and the last runs as a table.

matplotlib draws the charts with its Agg canvas on one private ``Figure`` reused
for every chart (never pyplot, so nothing global changes for other users of
matplotlib in the process). The plot fills the image and carries no text: the
axis numbers, dates, feature names and legends are HTML placed around it. That
keeps a job to about 15 KB (the images have few colours and are reduced to a
palette with Pillow) and 200 jobs render in seconds (laying out text and building
axes are most of matplotlib's cost). matplotlib is the optional extra ``report``
(``pip install 'batch-scorer[report]'``), imported only when a report is rendered.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from batch_scorer.errors import UsageError
from batch_scorer.monitoring.drift import ALERT, ALERT_PSI, WARN, WARN_PSI, FeatureDrift, describe, status
from batch_scorer.monitoring.profile import SCORE, Profile

RUN_COLUMNS = ("as_of", "run_id", "status", "rows_read", "rows_scored", "rows_rejected", "seconds", "model_version")
# Optional columns of ``runs``: the run that replaced this one, and the run's drift status.
RUN_EXTRA_COLUMNS = ("replaced_by", "drift_status")
SCORE_COLUMNS = ("bin", "reference_share", "current_share")
PSI_COLUMNS = ("as_of", "feature", "psi")
METRIC_COLUMNS = ("as_of", "model_version", "role", "metric", "value")
MAX_RUNS = 60  # runs drawn per chart (the latest)
MAX_FEATURES = 15  # heatmap rows (the highest latest PSI first)
MAX_METRICS = 3  # metric charts per job
LAST_RUNS_TABLE = 5
_DPI = 72
_COLORS = 32  # palette size of each PNG
_BLUE, _GREY, _ORANGE, _RED = "#3b75af", "#b0b0b0", "#ef8636", "#c53a32"
_PSI_COLORS = ("#cfe8cf", "#f6c85f", "#d9534f")  # ok, warn, alert


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in columns})


@dataclass
class JobReport:
    """What the report shows of one job; every frame may be empty ("no data yet").

    * ``runs``: one row per run, columns :data:`RUN_COLUMNS` (``as_of`` a date,
      ``status`` e.g. ``succeeded``/``failed``, row counts, ``seconds`` the run's
      duration); drawn in ``as_of`` then ``run_id`` order, the last one is the "last run";
      optional :data:`RUN_EXTRA_COLUMNS`: ``replaced_by`` (a replaced run is shown so in
      the table of the latest runs, which lists the newest ``run_id`` first) and
      ``drift_status`` (a last run that failed on a drift alert says so in the header).
    * ``score_distribution``: the latest run's score against the reference, one row
      per bin in bin order, columns :data:`SCORE_COLUMNS` (``bin`` a label, shares 0..1).
    * ``psi``: long form, one row per run date and feature, columns
      :data:`PSI_COLUMNS`; drawn as a heatmap (features x runs), and the latest
      ``as_of`` gives the header's alert features (a duplicate keeps its last row).
    * ``metrics``: realized performance, columns :data:`METRIC_COLUMNS`
      (``role`` ``champion`` or ``challenger``); one chart per metric.
    * ``model_version``: shown in the header; default: the last run's (the one whose
      as_of and status the header shows).
    """

    job: str
    model_version: str | None = None
    runs: pd.DataFrame = field(default_factory=lambda: _empty(RUN_COLUMNS))
    score_distribution: pd.DataFrame = field(default_factory=lambda: _empty(SCORE_COLUMNS))
    psi: pd.DataFrame = field(default_factory=lambda: _empty(PSI_COLUMNS))
    metrics: pd.DataFrame = field(default_factory=lambda: _empty(METRIC_COLUMNS))
    warn_psi: float = WARN_PSI
    alert_psi: float = ALERT_PSI


def share_table(reference: Profile, current: Profile, feature: str = SCORE) -> pd.DataFrame:
    """A :attr:`JobReport.score_distribution` frame: each bin's label and its share in both profiles."""
    bins = current.bins[feature]
    if reference.bins.get(feature) != bins:
        raise ValueError(f"feature {feature!r}: the current profile's bins are not the reference's")
    ref, cur = reference.counts(feature).astype(float), current.counts(feature).astype(float)
    return pd.DataFrame(
        {
            "bin": [b.label for b in bins.bins],
            "reference_share": ref / ref.sum() if ref.sum() else ref,
            "current_share": cur / cur.sum() if cur.sum() else cur,
        }
    )


def render_report(jobs: Sequence[JobReport], title: str = "batch-scorer monitoring", note: str = "") -> str:
    """The whole report as one HTML document (a string to write to a ``.html`` file).

    ``note`` is a line under the title (e.g. when and from which database it was made).
    Raises :class:`UsageError` when matplotlib is not installed, ``ValueError`` when a
    non-empty frame lacks one of its columns.
    """
    canvas = _Canvas()
    views = [_prepare(report) for report in jobs]
    head = f"<h1>{_e(title)}</h1>" + (f'<p class="note">{_e(note)}</p>' if note else "")
    body = head + _overview(views) + "".join(_job_section(view, canvas) for view in views)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


@dataclass(frozen=True)
class _Job:
    """One job's frames checked and put in order once, and its header facts."""

    report: JobReport
    runs: pd.DataFrame  # in as_of, run_id order
    run_days: list[str]
    version: str
    last_status: str
    last_as_of: str
    last_drift_status: str | None
    drifts: list[FeatureDrift]  # the latest run date's, every feature
    drifts_as_of: str  # that date, as the runs' dates are written ("-": no PSI)


def _prepare(report: JobReport) -> _Job:
    for name, columns in (
        ("runs", RUN_COLUMNS),
        ("score_distribution", SCORE_COLUMNS),
        ("psi", PSI_COLUMNS),
        ("metrics", METRIC_COLUMNS),
    ):
        frame = getattr(report, name)
        missing = [c for c in columns if c not in frame.columns] if len(frame) else []
        if missing:
            raise ValueError(f"job {report.job!r}: the report's {name} frame has no column {missing[0]!r}")
    runs = report.runs
    if len(runs):
        order = pd.to_datetime(runs["as_of"], errors="coerce")
        runs = runs.assign(_order=order).sort_values(["_order", "run_id"], kind="stable").drop(columns="_order")
    days = _days(runs["as_of"]) if len(runs) else []
    last = runs.iloc[-1] if len(runs) else None
    drifts, drifts_as_of = _latest_drifts(report)
    return _Job(
        report=report,
        runs=runs,
        run_days=days,
        version=report.model_version or (str(last["model_version"]) if last is not None else "-"),
        last_status=str(last["status"]) if last is not None else "no runs yet",
        last_as_of=days[-1] if days else "-",
        last_drift_status=_text_or_none(last.get("drift_status")) if last is not None else None,
        drifts=drifts,
        drifts_as_of=drifts_as_of,
    )


def _text_or_none(value: Any) -> str | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _alert_text(view: _Job, alerts: list[FeatureDrift], limit: int | None = None) -> str:
    """The alerting features, or that the last run failed on a drift alert (``on_alert: fail``
    publishes nothing, so its PSI are in no published run's drift rows), or ''."""
    if alerts:
        text = describe(alerts) if limit is None else describe(alerts, limit=limit)
        if view.drifts_as_of != view.last_as_of:  # e.g. the last run failed, or was retracted
            text += f" (as_of {view.drifts_as_of}, the latest published)"
        return text
    if view.last_status == "failed" and view.last_drift_status == "alert":
        return "the last run failed on a drift alert (monitor.on_alert: fail; its error names the features)"
    return ""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _days(values: pd.Series) -> list[str]:
    """Run dates as text: ``2026-03-31``, or with the time when there is one; else ``str``."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    text = np.array(_day_texts(uniques)[0], dtype=object)
    return list(text[codes])


def _day_texts(uniques: Any) -> tuple[list[str], np.ndarray]:
    """Text and time order (unparsable values last) of distinct date values, each converted once."""
    texts, keys = [], []
    for value in uniques:
        try:
            stamp = pd.Timestamp(value)
        except (TypeError, ValueError):
            stamp = pd.NaT
        if pd.isna(stamp):
            texts.append(str(value))
            keys.append(np.inf)
            continue
        whole_day = stamp == stamp.normalize()
        texts.append(stamp.strftime("%Y-%m-%d" if whole_day else "%Y-%m-%d %H:%M"))
        keys.append(stamp.timestamp())
    return texts, np.argsort(np.asarray(keys, dtype=float), kind="stable")


def _latest_drifts(report: JobReport) -> tuple[list[FeatureDrift], str]:
    """The latest run date's PSI per feature, with its status by the job's thresholds, and
    that date written as the runs' dates are ("-": no PSI)."""
    frame = report.psi
    if frame.empty:
        return [], "-"
    stamps = pd.to_datetime(frame["as_of"], errors="coerce")
    latest = frame[stamps == stamps.max()].drop_duplicates("feature", keep="last")
    drifts = [
        FeatureDrift(str(f), float(p), None, status(float(p), report.warn_psi, report.alert_psi))
        for f, p in zip(latest["feature"], latest["psi"], strict=True)
        if pd.notna(p)
    ]
    return drifts, _days(latest["as_of"].head(1))[0] if len(latest) else "-"


def _overview(views: Sequence[_Job]) -> str:
    """A table of every job with a link to its section: the page's first screen."""
    rows = []
    for view in views:
        alerts = [d for d in view.drifts if d.status == ALERT]
        rows.append(
            f'<tr><td><a href="#{_anchor(view.report.job)}">{_e(view.report.job)}</a></td><td>{_e(view.version)}</td>'
            f"<td>{_e(view.last_as_of)}</td><td>{_status_badge(view.last_status)}</td>"
            f"<td>{_e(_alert_text(view, alerts, limit=3))}</td></tr>"
        )
    if not rows:
        return '<p class="empty">no jobs</p>'
    return (
        '<table class="overview"><thead><tr><th>job</th><th>model version</th><th>last run</th>'
        f"<th>status</th><th>drift alerts</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _anchor(job: str) -> str:
    return "job-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in job)


def _status_badge(value: str) -> str:
    kind = {"succeeded": "ok", "failed": "bad", "running": "run"}.get(value, "other")
    return f'<span class="badge {kind}">{_e(value)}</span>'


def _job_section(view: _Job, canvas: _Canvas) -> str:
    report = view.report
    alerts = [d for d in view.drifts if d.status == ALERT]
    warned = [d for d in view.drifts if d.status == WARN]
    facts = (
        f"model version <b>{_e(view.version)}</b> &middot; last run {_e(view.last_as_of)} "
        f"{_status_badge(view.last_status)} &middot; drift alerts: <b>{_e(_alert_text(view, alerts) or 'none')}</b>"
        + (f" &middot; warnings: {_e(describe(warned))}" if warned else "")
    )
    charts = [
        _figure("Rows per run", _runs_plot(canvas, view)),
        _figure("Score distribution: reference vs the latest as_of's published run",
                _score_plot(canvas, report.score_distribution)),
        _figure("PSI per feature over the last runs", _psi_plot(canvas, report)),
    ]
    charts += _metric_figures(canvas, report.metrics)
    return (
        f'<section id="{_anchor(report.job)}"><h2>{_e(report.job)}</h2><p class="facts">{facts}</p>'
        f'<div class="charts">{"".join(charts)}</div>{_runs_table(view)}</section>'
    )


def _runs_table(view: _Job) -> str:
    """The newest :data:`LAST_RUNS_TABLE` runs, newest ``run_id`` first (a re-score of an older
    day included); a replaced run says which run replaced it."""
    runs = view.runs.assign(_day=view.run_days)
    if runs.empty:
        return ""
    cells = []
    last = runs.sort_values("run_id", ascending=False, kind="stable").head(LAST_RUNS_TABLE)
    for _, run in last.iterrows():
        text = "".join(f"<td>{_e(v)}</td>" for v in (run["_day"], run["run_id"], run["model_version"]))
        counts = "".join(f'<td class="n">{_count(run[c])}</td>' for c in ("rows_read", "rows_scored", "rows_rejected"))
        seconds = "-" if pd.isna(run["seconds"]) else f"{float(run['seconds']):.1f}"
        replaced = run.get("replaced_by")  # a float column once a NULL is in it
        badge = _status_badge(f"replaced by run {int(replaced)}" if pd.notna(replaced) else str(run["status"]))
        cells.append(f'<tr>{text}<td>{badge}</td>{counts}<td class="n">{seconds}</td></tr>')
    return (
        '<table class="runs"><thead><tr><th>as of</th><th>run</th><th>model version</th><th>status</th>'
        "<th>read</th><th>scored</th><th>rejected</th><th>seconds</th></tr></thead>"
        f"<tbody>{''.join(cells)}</tbody></table>"
    )


def _count(value: Any) -> str:
    return "-" if pd.isna(value) else f"{int(value):,}"


@dataclass(frozen=True)
class _Plot:
    """A drawn chart: the PNG and the text around it (placed by CSS, as fractions of the image)."""

    png: bytes
    width: int
    height: int
    y_ticks: tuple[tuple[float, str], ...] = ()  # (fraction from the top, label)
    x_ticks: tuple[tuple[float, str], ...] = ()  # (fraction from the left, label)
    legend: tuple[tuple[str, str], ...] = ()  # ("colour" a box, "line:colour" or "dash:colour", label)
    wide_labels: bool = False  # y labels are names (the heatmap's features), not numbers


def _figure(caption: str, plot: _Plot | None) -> str:
    """One chart: caption, y labels, the image, x labels and the legend, all but the image as text."""
    if plot is None:
        return f'<figure><figcaption>{_e(caption)}</figcaption><p class="empty">no data yet</p></figure>'
    data = base64.b64encode(plot.png).decode("ascii")
    ys = "".join(f'<span style="top:{100 * f:.2f}%">{_e(t)}</span>' for f, t in plot.y_ticks)
    xs = "".join(
        f'<span style="left:{100 * f:.2f}%" title="{_e(t)}">{_e(_short(t, 16))}</span>' for f, t in plot.x_ticks
    )
    keys = "".join(
        f'<span><i class="{style}" style="--c:{_e(colour)}"></i>{_e(t)}</span>'
        for (style, colour), t in ((_swatch(c), t) for c, t in plot.legend)
    )
    return (
        f'<figure><figcaption>{_e(caption)}</figcaption><div class="plot{" names" if plot.wide_labels else ""}">'
        f'<div class="y" style="height:{plot.height}px">{ys}</div>'
        f'<img alt="{_e(caption)}" width="{plot.width}" height="{plot.height}" src="data:image/png;base64,{data}">'
        f'<div></div><div class="x">{xs}</div></div><div class="legend">{keys}</div></figure>'
    )


def _swatch(key: str) -> tuple[str, str]:
    """``(css class, colour)`` of a legend key: a box, or a solid or dashed line."""
    style, _, colour = key.rpartition(":")
    return style or "box", colour


class _Canvas:
    """One matplotlib Agg figure, reused for every chart of a report.

    The axes fill the whole image with no axis drawn: the numbers, dates and names
    around a chart are HTML text. Building axes and laying out text are most of
    matplotlib's cost, so a report of 200 jobs renders in seconds, and an image
    without text has few colours and packs into a small palette PNG.
    """

    def __init__(self) -> None:
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.collections import LineCollection, PolyCollection
            from matplotlib.colors import BoundaryNorm, ListedColormap
            from matplotlib.figure import Figure
            from PIL import Image
        except ImportError as exc:
            raise UsageError(
                f"the HTML monitoring report needs matplotlib, which is not installed ({exc}); "
                "install the report extra: pip install 'batch-scorer[report]'"
            ) from exc
        self.Poly, self.Lines, self.Image = PolyCollection, LineCollection, Image
        self.BoundaryNorm, self.ListedColormap = BoundaryNorm, ListedColormap
        self.fig = Figure(dpi=_DPI, facecolor="white")
        FigureCanvasAgg(self.fig)
        self.ax = self.fig.add_axes((0.0, 0.0, 1.0, 1.0))
        self.ax.set_axis_off()

    def begin(self, width: int, height: int, xlim: tuple[float, float], ylim: tuple[float, float]) -> Any:
        """Clear the previous chart and return the axes, sized ``width x height`` pixels."""
        for artist in [*self.ax.collections, *self.ax.lines, *self.ax.images]:
            artist.remove()
        self.fig.set_size_inches(width / _DPI, height / _DPI)
        self.ax.set_xlim(*xlim)
        self.ax.set_ylim(*ylim)
        return self.ax

    def grid(self, ticks: Sequence[float], xlim: tuple[float, float]) -> None:
        """Light horizontal lines at the y ticks, under the data."""
        segments = [[(xlim[0], t), (xlim[1], t)] for t in ticks]
        lines = self.Lines(segments, colors="#e3e3e3", linewidths=1, zorder=0, antialiased=False)
        self.ax.add_collection(lines, autolim=False)

    def bars(self, left: np.ndarray, width: float, bottom: np.ndarray, top: np.ndarray, color: str) -> None:
        """Rectangles as one PolyCollection (ax.bar's one patch per bar is 20x slower)."""
        x0, x1 = left, left + width
        verts = np.stack([np.c_[x0, bottom], np.c_[x0, top], np.c_[x1, top], np.c_[x1, bottom]], axis=1)
        poly = self.Poly(verts, facecolors=color, edgecolors="none", antialiased=False)
        self.ax.add_collection(poly, autolim=False)

    def png(self) -> bytes:
        """The chart as a palette PNG."""
        self.fig.canvas.draw()
        size = self.fig.canvas.get_width_height()
        image = self.Image.frombuffer("RGBA", size, self.fig.canvas.buffer_rgba()).convert("RGB")
        out = io.BytesIO()
        # optimize=True would cost ten times the time for a few percent.
        image.quantize(colors=_COLORS, method=self.Image.Quantize.FASTOCTREE).save(out, "PNG")
        return out.getvalue()


def _nice_ticks(low: float, high: float, count: int = 3) -> list[float]:
    """Round tick values from at most ``low`` to at least ``high``, about ``count`` steps."""
    if not np.isfinite(low) or not np.isfinite(high):
        low, high = 0.0, 1.0
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = np.floor(low / step) * step
    ticks = [float(start)]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(float(start + step * len(ticks)))
    return ticks


def _y_labels(ticks: Sequence[float], fmt: Any) -> tuple[tuple[float, str], ...]:
    low, high = ticks[0], ticks[-1]
    return tuple(((high - t) / (high - low), fmt(t)) for t in ticks)


def _x_labels(labels: Sequence[str], most: int = 3) -> tuple[tuple[float, str], ...]:
    """Up to ``most`` labels spread over ``len(labels)`` equal slots (first and last included)."""
    n = len(labels)
    picks = sorted({int(round(i)) for i in np.linspace(0, n - 1, min(n, most))})
    return tuple(((i + 0.5) / n, labels[i]) for i in picks)


def _human(value: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


def _share(value: float) -> str:
    return f"{100 * value:.0f}%"


def _runs_plot(canvas: _Canvas, view: _Job) -> _Plot | None:
    """Rows scored (blue) and rejected (orange) per run; a run that did not succeed is a short red bar."""
    if view.runs.empty:
        return None
    runs = view.runs.tail(MAX_RUNS)
    n = len(runs)
    scored = pd.to_numeric(runs["rows_scored"], errors="coerce").fillna(0).to_numpy(float)
    rejected = pd.to_numeric(runs["rows_rejected"], errors="coerce").fillna(0).to_numpy(float)
    failed = (runs["status"].astype(str) != "succeeded").to_numpy()
    ticks = _nice_ticks(0.0, max(float((scored + rejected).max()), 1.0))
    xlim = (-0.5, n - 0.5)
    canvas.begin(_WIDTH, _HEIGHT, xlim, (ticks[0], ticks[-1]))
    canvas.grid(ticks, xlim)
    x = np.arange(n, dtype=float) - 0.4
    ok = ~failed
    canvas.bars(x[ok], 0.8, np.zeros(ok.sum()), scored[ok], _BLUE)
    canvas.bars(x[ok], 0.8, scored[ok], scored[ok] + rejected[ok], _ORANGE)
    canvas.bars(x[failed], 0.8, np.zeros(failed.sum()), np.full(failed.sum(), ticks[-1] * 0.12), _RED)
    legend = ((_BLUE, "scored"), (_ORANGE, "rejected"), (_RED, "not succeeded"))
    return _Plot(canvas.png(), _WIDTH, _HEIGHT, _y_labels(ticks, _human), _x_labels(view.run_days[-n:]), legend)


def _score_plot(canvas: _Canvas, frame: pd.DataFrame) -> _Plot | None:
    """Reference (grey) and latest run (blue) share of each score bin, side by side."""
    if frame.empty:
        return None
    n = len(frame)
    ref = pd.to_numeric(frame["reference_share"], errors="coerce").fillna(0).to_numpy(float)
    cur = pd.to_numeric(frame["current_share"], errors="coerce").fillna(0).to_numpy(float)
    ticks = _nice_ticks(0.0, max(float(max(ref.max(), cur.max())), 0.01))
    xlim = (-0.5, n - 0.5)
    canvas.begin(_WIDTH, _HEIGHT, xlim, (ticks[0], ticks[-1]))
    canvas.grid(ticks, xlim)
    x = np.arange(n, dtype=float)
    canvas.bars(x - 0.4, 0.4, np.zeros(n), ref, _GREY)
    canvas.bars(x, 0.4, np.zeros(n), cur, _BLUE)
    labels = [str(b) for b in frame["bin"]]
    legend = ((_GREY, "reference"), (_BLUE, "latest run"))
    return _Plot(canvas.png(), _WIDTH, _HEIGHT, _y_labels(ticks, _share), _x_labels(labels, 4), legend)


def _by_day(frame: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The last :data:`MAX_RUNS` distinct run dates in time order, and each row's slot (-1: older)."""
    codes, uniques = pd.factorize(frame["as_of"], use_na_sentinel=False)
    texts, order = _day_texts(uniques)
    kept = list(dict.fromkeys(texts[i] for i in order))[-MAX_RUNS:]
    slot_of_unique = pd.Index(kept, dtype=object).get_indexer(texts)
    return kept, slot_of_unique[codes]


def _psi_plot(canvas: _Canvas, report: JobReport) -> _Plot | None:
    """Features (rows, highest latest PSI on top) x run dates, coloured ok / warn / alert."""
    frame = report.psi
    if frame.empty:
        return None
    days, slot = _by_day(frame)
    codes, features = pd.factorize(frame["feature"].astype(str))
    values = pd.to_numeric(frame["psi"], errors="coerce").to_numpy(float)
    grid = np.full((len(features), len(days)), np.nan)
    for i in np.flatnonzero(slot >= 0):  # one cell per (feature, day); a later row wins
        grid[codes[i], slot[i]] = values[i]
    top = np.argsort(-np.nan_to_num(grid[:, -1], nan=-np.inf), kind="stable")[:MAX_FEATURES]
    grid, names = grid[top], [str(features[i]) for i in top]
    rows, cols = grid.shape
    height = rows * _HEAT_ROW
    ax = canvas.begin(_WIDTH, height, (-0.5, cols - 0.5), (rows - 0.5, -0.5))
    cmap = canvas.ListedColormap(list(_PSI_COLORS)).with_extremes(bad="#ffffff")
    norm = canvas.BoundaryNorm([0.0, report.warn_psi, report.alert_psi, np.inf], cmap.N)
    ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    legend = (
        (_PSI_COLORS[0], f"ok < {report.warn_psi:g}"),
        (_PSI_COLORS[1], f"warn \u2265 {report.warn_psi:g}"),
        (_PSI_COLORS[2], f"alert \u2265 {report.alert_psi:g}"),
    )
    labels = tuple(((i + 0.5) / rows, name) for i, name in enumerate(names))
    return _Plot(canvas.png(), _WIDTH, height, labels, _x_labels(days), legend, wide_labels=True)


def _metric_figures(canvas: _Canvas, metrics: pd.DataFrame) -> list[str]:
    """One chart per metric (the first :data:`MAX_METRICS` by name), or one "no data yet"."""
    values = pd.to_numeric(metrics["value"], errors="coerce").to_numpy(float) if len(metrics) else np.empty(0)
    metrics = metrics[~np.isnan(values)]
    if metrics.empty:
        return [_figure("Metrics over time", None)]
    days, slot = _by_day(metrics)
    columns = {c: metrics[c].astype(str).to_numpy(dtype=object) for c in ("metric", "model_version", "role")}
    series = _MetricRows(slot, values[~np.isnan(values)], columns["model_version"], columns["role"], days)
    names = sorted(set(columns["metric"]))[:MAX_METRICS]
    return [_figure(f"Metric: {name}", _metric_plot(canvas, series, columns["metric"] == name)) for name in names]


@dataclass(frozen=True)
class _MetricRows:
    slot: np.ndarray  # x position (run date), -1 for older dates
    value: np.ndarray
    version: np.ndarray
    role: np.ndarray
    days: list[str]


def _metric_plot(canvas: _Canvas, rows: _MetricRows, chosen: np.ndarray) -> _Plot:
    """One metric over run dates: a line per model version and role (challenger dashed)."""
    chosen = chosen & (rows.slot >= 0)
    order = np.argsort(rows.slot, kind="stable")
    order = order[chosen[order]]
    x, y = rows.slot[order], rows.value[order]
    versions, roles = rows.version[order], rows.role[order]
    ticks = _nice_ticks(float(y.min()), float(y.max())) if y.size else [0.0, 1.0]
    xlim = (-0.5, len(rows.days) - 0.5)
    ax = canvas.begin(_WIDTH, _HEIGHT, xlim, (ticks[0], ticks[-1]))
    canvas.grid(ticks, xlim)
    legend = []
    for i, (version, role) in enumerate(sorted(set(zip(versions, roles, strict=True)))):
        color, dashed = _LINES[i % len(_LINES)], role == "challenger"
        mine = (versions == version) & (roles == role)
        # Not antialiased: the blended edge pixels of a noisy 60-day line made its PNG 8 KB
        # instead of 3.5 KB, the difference between a 200-job fleet's report of 7 and 4 MB.
        # A series of one point (the first evaluated as_of) is a dot: a line of one point draws nothing.
        ax.plot(x[mine], y[mine], "--" if dashed else "-", color=color, lw=1.5, antialiased=False,
                marker="o" if mine.sum() == 1 else None, markersize=4)
        legend.append((("dash:" if dashed else "line:") + color, f"{version} {role}"))
    return _Plot(canvas.png(), _WIDTH, _HEIGHT, _y_labels(ticks, _human), _x_labels(rows.days), tuple(legend))


def _short(text: str, limit: int = 12) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


_WIDTH, _HEIGHT, _HEAT_ROW = 300, 84, 11  # pixels
_LINES = (_BLUE, _ORANGE, "#4d9a4d", "#8b62b8")
_CSS = (
    "body{font:13px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px 24px;color:#222;background:#fff}"
    "h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:0 0 4px}"
    "section{border-top:1px solid #ddd;padding:12px 0}"
    ".note,.facts{margin:0 0 8px;color:#444}"
    ".charts{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}"
    "figure{margin:0;border:1px solid #eee;padding:6px 10px 4px 4px;min-width:356px}"
    "figcaption{font-size:12px;color:#555;margin:0 0 4px 4px}"
    ".plot{display:grid;grid-template-columns:44px auto;font-size:10px;color:#555}"
    ".plot.names{grid-template-columns:110px auto}"
    ".plot img{display:block;border-bottom:1px solid #999}"
    ".y{position:relative;margin-right:4px}"
    ".y span{position:absolute;right:0;transform:translateY(-50%);white-space:nowrap;"
    "max-width:106px;overflow:hidden;text-overflow:ellipsis;line-height:13px}"
    ".x{position:relative;height:14px}"
    ".x span{position:absolute;top:1px;transform:translateX(-50%);white-space:nowrap}"
    ".legend{font-size:10px;color:#555;margin:2px 0 0 48px}.legend span{margin-right:10px;white-space:nowrap}"
    ".legend i{display:inline-block;width:10px;margin-right:3px;vertical-align:middle}"
    ".legend i.box{height:8px;background:var(--c)}.legend i.line{height:0;border-top:2px solid var(--c)}"
    ".legend i.dash{height:0;border-top:2px dashed var(--c)}"
    ".empty{color:#888;font-style:italic;margin:24px 8px}"
    "table{border-collapse:collapse;margin:8px 0;font-size:12px}"
    "th,td{border-bottom:1px solid #eee;padding:2px 8px;text-align:left}td.n{text-align:right}"
    ".badge{border-radius:3px;padding:0 5px;color:#fff;background:#777}"
    ".badge.ok{background:#3b7d3b}.badge.bad{background:#c53a32}.badge.run{background:#3b75af}"
    "a{color:#2a5d9f}"
)
