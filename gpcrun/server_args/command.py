"""One llama-server command line plus its environment, parsed once into a typed value, and written back.

Semantics copied from common/arg.cpp `common_params_parse_ex`:
- environment variables apply first, then command-line arguments override them;
- a '--' argument has '_' read as '-'; there is no '--flag=value' form (llama-server rejects '--port=8080' as an
  invalid argument, so it is kept verbatim as an unknown token, and llama-server says so);
- an option with a value takes the next token whatever it looks like ('-np -1');
- a repeated option: the last wins, except options whose handler appends (-ot, --lora, --api-key, ...);
- a boolean option with `--no-x` forms also reads LLAMA_ARG_NO_X from the environment (any value: false);
  a flag read from the environment counts only when truthy (on/enabled/true/1).
Unknown tokens (flags this llama-server does not have, positionals) are kept verbatim, in place, never dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from ..errors import UsageError
from .grammar import Grammar, Option

_TRUTHY = ("on", "enabled", "true", "1")


class ServerArgsError(UsageError):
    """A llama-server argument gpcrun must understand but cannot (a missing value, a non-integer count).

    The message says where it came from: "after --: -c needs a value" or "LLAMA_ARG_CTX_SIZE=big: ..."."""

    def __init__(self, message: str, flag: str | None = None, arg: "Arg | None" = None) -> None:
        where = "after --" if arg is None or arg.source == "argv" else f"{arg.token}={arg.values[0]}"
        super().__init__(f"{where}: {message}", flag=flag)
        self.flag = flag


@dataclass(frozen=True)
class Arg:
    """One occurrence: a flag and its values as written, or an unknown token (option None)."""

    token: str  # as written ('--ctx_size', '-c', 'LLAMA_ARG_CTX_SIZE' for env items)
    values: tuple[str, ...] = ()
    option: Option | None = None
    positive: bool = True
    source: str = "argv"  # "argv" | "env"

    def tokens(self) -> list[str]:
        return [self.token, *self.values]

    @property
    def spelled(self) -> str:
        """The flag as the user wrote it, or the option's first name for an environment item."""
        return self.token if self.source == "argv" or self.option is None else self.option.names[0]


@dataclass(frozen=True)
class ServerArgs:
    items: tuple[Arg, ...]  # environment items first (applied first), then argv in order
    grammar: Grammar

    # ------------------------------------------------------------------------------------------ parse / write

    @classmethod
    def parse(cls, argv: Sequence[str], env: Mapping[str, str] | None = None,
              grammar: Grammar | None = None, strict: bool = True) -> "ServerArgs":
        """strict=False: a flag missing its value at the end is kept (with no value) instead of an error; for
        reading recorded command lines (receipts) rather than checking new ones."""
        from .grammar import table_grammar
        g = grammar or table_grammar()
        items: list[Arg] = []
        for o in g.options if env else ():
            neg = o.neg_env
            if neg and neg in env:
                items.append(Arg(neg, (env[neg],), o, False, "env"))
            elif o.env and o.env in env:
                v = env[o.env]
                if o.value_type == "flag" and v.lower() not in _TRUTHY:
                    continue
                if o.value_type == "bool":
                    items.append(Arg(o.env, (v,), o, v.lower() in _TRUTHY, "env"))
                else:
                    items.append(Arg(o.env, (v,), o, True, "env"))
        args = list(argv)
        i = 0
        while i < len(args):
            tok = args[i]
            hit = g.lookup(tok)
            if hit is None:
                items.append(Arg(tok))
                i += 1
                continue
            o, positive = hit
            if o.arity and i + o.arity >= len(args) and not strict:
                items.append(Arg(tok, tuple(args[i + 1:]), o, positive, "argv"))
                break
            if o.arity and i + o.arity >= len(args):
                raise ServerArgsError(f"{tok} needs {'a value' if o.arity == 1 else f'{o.arity} values'}", tok)
            items.append(Arg(tok, tuple(args[i + 1:i + 1 + o.arity]), o, positive, "argv"))
            i += 1 + o.arity
        return cls(tuple(items), g)

    def argv(self) -> list[str]:
        """The command-line tokens, verbatim and in order (environment items stay in the environment)."""
        return [t for a in self.items if a.source == "argv" for t in a.tokens()]

    def unknown(self) -> list[str]:
        return [a.token for a in self.items if a.option is None]

    # ------------------------------------------------------------------------------------------ effective values

    def _occurrences(self, key: str) -> list[Arg]:
        o = self.grammar.by_key(key)
        return [a for a in self.items if a.option is not None and a.option.key == (o.key if o else key)]

    def is_set(self, key: str) -> bool:
        return bool(self._occurrences(key))

    def source(self, key: str) -> str | None:
        occ = self._occurrences(key)
        return occ[-1].source if occ else None

    def where(self, key: str) -> str | None:
        """How the user set it, for messages: '-c 4096' or 'LLAMA_ARG_CTX_SIZE=4096'."""
        occ = self._occurrences(key)
        if not occ:
            return None
        a = occ[-1]
        return f"{a.token}={a.values[0]}" if a.source == "env" else " ".join(a.tokens())

    def value(self, key: str) -> str | None:
        """The value llama-server ends up with (last occurrence; env first), None when not set."""
        occ = self._occurrences(key)
        return occ[-1].values[0] if occ and occ[-1].values else None

    def values(self, key: str) -> list[str]:
        """Every value of an accumulating option, in the order llama-server applies them."""
        return [a.values[0] for a in self._occurrences(key) if a.values]

    def flag(self, key: str) -> bool | None:
        """A flag or boolean option: True/False when set, None when not."""
        occ = self._occurrences(key)
        return occ[-1].positive if occ else None

    def last(self, key: str) -> Arg | None:
        occ = self._occurrences(key)
        return occ[-1] if occ else None

    def int_value(self, key: str) -> int | None:
        a = self.last(key)
        if a is None or not a.values:
            return None
        try:
            return int(a.values[0])
        except ValueError:
            raise ServerArgsError(f"{a.spelled} expects an integer, got {a.values[0]!r}", key, a) from None

    # ------------------------------------------------------------------------------------------ changes

    def with_arg(self, flag: str, *values: str) -> "ServerArgs":
        """A copy with `flag values...` appended to the command line (for an option the user left unset)."""
        hit = self.grammar.lookup(flag)
        o, pos = hit if hit else (None, True)
        return replace(self, items=(*self.items, Arg(flag, tuple(values), o, pos, "argv")))

    def without(self, key: str) -> "ServerArgs":
        return replace(self, items=tuple(a for a in self.items
                                         if not (a.option is not None and a.option.key == key and a.source == "argv")))
