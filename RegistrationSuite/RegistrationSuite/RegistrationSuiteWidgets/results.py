"""Human-readable summaries of a ``RegistrationResult`` for the modules' result labels."""


def _number(value, fmt):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if value != value else format(value, fmt)  # NaN check without importing math


def formatResultSummary(result, elapsedSeconds=None):
    """One line with the score, confidence and time, a "doubtful" line when the method listed reasons to check
    the result (``diagnostics["doubtful"]``), then one line per warning.

    Args:
        result: a ``RegistrationResult``.
        elapsedSeconds: wall time measured by the widget; ``result.timings["total"]`` when ``None``.
    """
    seconds = elapsedSeconds if elapsedSeconds is not None else result.timings.get("total")
    lines = [
        f"Score {_number(result.score, '.4f')}, confidence {_number(result.confidence, '.3f')}, "
        f"time {_number(seconds, '.1f')} s"
    ]
    reasons = list((result.diagnostics or {}).get("doubtful") or [])
    if reasons:
        lines.append(f"DOUBTFUL result ({len(reasons)} reason(s) below): inspect the alignment before using it.")
    lines += [f"Warning: {w}" for w in result.warnings]
    return "\n".join(lines)
