"""llama-server's arguments, modelled once: the grammar (from the binary's --help, or the table generated from
llama.cpp's common/arg.cpp), one parse of a command line plus its environment into ServerArgs, typed readings
(settings), and the command line written back. Planning, launching, benchmarking and redaction all use it."""
from .command import Arg, ServerArgs, ServerArgsError
from .grammar import Grammar, Option, grammar_for, table_grammar
from . import settings

__all__ = ["Arg", "Grammar", "Option", "ServerArgs", "ServerArgsError", "grammar_for", "settings", "table_grammar"]
