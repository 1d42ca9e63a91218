"""``mlstack completion bash``: shell completion of commands and options, generated from the
parser itself (so it never drifts from the commands)."""

from __future__ import annotations

import argparse


def _tree(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], list[str]]:
    """Command path -> the words that may follow it (sub-commands, then options)."""
    words: list[str] = []
    tree: dict[tuple[str, ...], list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                tree.update(_tree(sub, (*path, name)))
        else:
            words += [s for s in action.option_strings if s.startswith("--") or len(s) == 2]
    tree[path] = words
    return tree


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for ``parser``'s program (``source <(mlstack completion bash)``)."""
    tree = _tree(parser)
    prog = parser.prog
    known = " | ".join(f'"{" ".join(("", *p))}"' for p in sorted(tree) if p)
    cases = "\n".join(
        f'    "{" ".join(("", *p))}") words="{" ".join(words)}" ;;'
        for p, words in sorted(tree.items())
    )
    return f"""# bash completion for {prog}: source <({prog} completion bash)
_{prog}() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word words i
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="${{COMP_WORDS[i]}}"
    case "$path $word" in
      {known}) path="$path $word" ;;
    esac
  done
  case "$path" in
{cases}
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _{prog} {prog}
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the shell completion command(s) to the ``mlstack`` parser's sub-commands."""
    comp = sub.add_parser("completion", help="print a shell completion script")
    comp.add_argument(
        "shell", choices=("bash",), help="the shell (bash; zsh reads it through bashcompinit)"
    )
    comp.set_defaults(func=None, completion=True)
