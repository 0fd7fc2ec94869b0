# bash completion for ckpt
_ckpt() {
  local cur prev words cword
  _init_completion || return

  local subcommands="list best rotate inspect convert"
  local subcommand=""
  local i
  for ((i = 1; i < cword; i++)); do
    case "${words[i]}" in
      -*) ;;
      *) subcommand=${words[i]}; break ;;
    esac
  done

  if [[ -z $subcommand ]]; then
    COMPREPLY=($(compgen -W "$subcommands --help --version" -- "$cur"))
    return
  fi

  case $prev in
    --mode) COMPREPLY=($(compgen -W "min max" -- "$cur")); return ;;
    --sort) COMPREPLY=($(compgen -W "step mtime" -- "$cur")); return ;;
    --to) COMPREPLY=($(compgen -W "safetensors pytorch" -- "$cur")); return ;;
    --dtype) COMPREPLY=($(compgen -W "bf16 fp16 fp32" -- "$cur")); return ;;
    --max-shard-size) COMPREPLY=($(compgen -W "500MB 1GB 2GB 5GB 10GB" -- "$cur")); return ;;
    -o | --output) _filedir; return ;;
    --metric) COMPREPLY=($(compgen -W "eval_loss eval_accuracy" -- "$cur")); return ;;
    --keep | --keep-every | --stale-after | --link) return ;;
    --export) _filedir -d; return ;;
  esac

  local options
  case $subcommand in
    list) options="--json --metric --mode --sort --use-mtime --help" ;;
    best) options="--metric --mode --json --link --export --help" ;;
    rotate) options="--keep --keep-every --stale-after --sort --use-mtime --metric --mode --dry-run --no-wait --json --quiet --help" ;;
    inspect) options="--json --verify --help" ;;
    convert) options="--to --output --max-shard-size --dtype --include-state --dry-run --force --json --quiet --help" ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$options" -- "$cur"))
  elif [[ $subcommand == inspect || $subcommand == convert ]]; then
    _filedir
  else
    _filedir -d
  fi
}
complete -F _ckpt ckpt
