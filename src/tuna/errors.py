"""The one error type meant for the user: the CLI prints its message without a traceback and exits 2."""
import importlib.util


class UserError(Exception):
    """Bad input or an impossible request, explained in one readable message."""


def first_line(exc: BaseException) -> str:
    """A library exception's first non-blank line (its type's name if it has none): the reason in a one-line error."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def require_packages(setting: str, needs: dict[str, tuple[str, str]], remove: str) -> None:
    """Refuse, before any slow work, a setting whose packages are missing.

    `needs`: what the user asked for -> (module to import, pip package that provides it).
    """
    missing = {name: pip for name, (module, pip) in needs.items() if importlib.util.find_spec(module) is None}
    if missing:
        raise UserError(f"{setting} {', '.join(missing)}, not installed here; install it with "
                        f"`pip install {' '.join(missing.values())}` or remove {remove}")
