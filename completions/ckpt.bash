# bash completion for ckpt

# The named checkpoints of run directory $1, as ckpt list shows them: directories (not symlinks) holding
# trainer_state.json that are no checkpoint-N or staging directory.
_ckpt_named() {
  local dir name
  for dir in "$1"/*/; do
    name=${dir%/}
    name=${name##*/}
    [[ -L $1/$name || ! -e $1/$name/trainer_state.json || $name =~ ^checkpoint-[0-9]+$ || $name == tmp-checkpoint-* ]] && continue
    printf '%s\n' "$name"
  done
}

# What tag takes from run directory $1: its checkpoint-N directories and archives, as ckpt list names them.
_ckpt_tag_sources() {
  (cd -- "$1" 2>/dev/null && compgen -d -- checkpoint- && compgen -f -X '!*.ckpt' -- checkpoint-)
  (cd -- "$1/archive" 2>/dev/null && compgen -f -X '!*.ckpt' -- checkpoint- | sed 's|^|archive/|')
}

_ckpt() {
  local cur prev words cword
  _init_completion || return

  local subcommands="save resume list best latest rotate tag inspect diff convert"
  local subcommand=""
  local i
  for ((i = 1; i < cword; i++)); do
    case "${words[i]}" in
      -*) ;;
      *) subcommand=${words[i]}; break ;;
    esac
  done

  if [[ -z $subcommand ]]; then
    COMPREPLY=($(compgen -W "$subcommands help --help --version" -- "$cur"))
    return
  fi
  if [[ $subcommand == help ]]; then
    [[ $prev == help ]] && COMPREPLY=($(compgen -W "$subcommands" -- "$cur"))
    return
  fi

  case $prev in
    --mode) COMPREPLY=($(compgen -W "min max" -- "$cur")); return ;;
    --sort) COMPREPLY=($(compgen -W "step mtime" -- "$cur")); return ;;
    --to) COMPREPLY=($(compgen -W "safetensors pytorch archive dir" -- "$cur")); return ;;
    --dtype) COMPREPLY=($(compgen -W "bf16 fp16 fp32" -- "$cur")); return ;;
    --max-shard-size) COMPREPLY=($(compgen -W "500MB 1GB 2GB 5GB 10GB" -- "$cur")); return ;;
    -o | --output) _filedir; return ;;
    --metric) COMPREPLY=($(compgen -W "eval_loss eval_accuracy" -- "$cur")); return ;;
    --keep | --keep-every | --stale-after | --link | --keep-archives | --level | --save-name | --tolerance | --rtol | --only) return ;;
    --export | --output-dir | --archive-dir | --restore-to | --recursive) _filedir -d; return ;;
    --from)
      # The checkpoints of the run directory given earlier on the line.
      local run="" j
      for ((j = i + 1; j < cword; j++)); do
        if [[ ${words[j]} != -* && ${words[j - 1]} != --from && -d ${words[j]} ]]; then
          run=${words[j]}
          break
        fi
      done
      if [[ -n $run && -d $run ]]; then
        # Live checkpoints, the archived ones resume restores by name, and named checkpoints.
        local names archived
        names=$(cd -- "$run" 2>/dev/null && compgen -d -- checkpoint-)
        archived=$(cd -- "$run/archive" 2>/dev/null && compgen -f -X '!*.ckpt' -- checkpoint-)
        names="$names ${archived//.ckpt/} $(_ckpt_named "$run")"
        COMPREPLY=($(compgen -W "$names" -- "$cur"))
      else
        _filedir -d
      fi
      return ;;
    --metric-for-best-model) COMPREPLY=($(compgen -W "eval_loss eval_accuracy" -- "$cur")); return ;;
    --input-size | --hidden-size | --num-layers | --num-labels | --dropout | --max-steps | --num-train-epochs | \
      --per-device-train-batch-size | --per-device-eval-batch-size | --learning-rate | --weight-decay | --adam-beta1 | \
      --adam-beta2 | --adam-epsilon | --max-grad-norm | --warmup-steps | --logging-steps | --eval-steps | --save-steps | \
      --save-total-limit | --seed | --train-examples | --eval-examples | --input-noise | --threads | --nproc-per-node | \
      --nnodes | --node-rank | --master-port) return ;;
    --master-addr) _known_hosts_real -- "$cur"; return ;;
  esac

  local options
  local training="--input-size --hidden-size --num-layers --num-labels --dropout --max-steps --num-train-epochs --per-device-train-batch-size --per-device-eval-batch-size --learning-rate --weight-decay --adam-beta1 --adam-beta2 --adam-epsilon --max-grad-norm --warmup-steps --logging-steps --eval-steps --save-steps --save-total-limit --metric-for-best-model --greater-is-better --no-greater-is-better --load-best-model-at-end --no-load-best-model-at-end --save-safetensors --no-save-safetensors --max-shard-size --seed --fp16 --no-fp16 --async-save --no-async-save --shard-optimizer --no-shard-optimizer --train-examples --eval-examples --input-noise --threads --nproc-per-node --nnodes --node-rank --master-addr --master-port --json --quiet --verbose --help"
  case $subcommand in
    save) options="--output-dir --overwrite-output-dir --resume-if-exists --save-name $training" ;;
    resume) options="--from --save-name $training" ;;
    list) options="--recursive --json --metric --mode --sort --use-mtime --help" ;;
    best) options="--metric --mode --json --link --export --help" ;;
    latest) options="--recursive --verify --archives --restore-to --json --help" ;;
    tag) options="--delete --json --help" ;;
    rotate) options="--recursive --keep --keep-every --stale-after --sort --use-mtime --metric --mode --archive --archive-dir --keep-archives --level --threads --dry-run --no-wait --json --quiet --help" ;;
    inspect) options="--json --summary --verify --help" ;;
    diff) options="--tolerance --rtol --only --all --json --quiet --help" ;;
    convert) options="--to --output --max-shard-size --dtype --include-state --consolidate --level --threads --dry-run --force --json --quiet --help" ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$options" -- "$cur"))
  elif [[ $subcommand == tag ]]; then
    # RUN_DIR, then a checkpoint or archive of it, then the new NAME; with --delete, RUN_DIR and a named checkpoint.
    local run="" positional=0 delete="" j
    for ((j = i + 1; j < cword; j++)); do
      case ${words[j]} in
        --delete) delete=1 ;;
        -*) ;;
        *)
          [[ -z $run ]] && run=${words[j]}
          positional=$((positional + 1))
          ;;
      esac
    done
    if ((positional == 0)); then
      _filedir -d
    elif ((positional == 1)) && [[ -d $run ]]; then
      if [[ -n $delete ]]; then
        COMPREPLY=($(compgen -W "$(_ckpt_named "$run")" -- "$cur"))
      else
        COMPREPLY=($(compgen -W "$(_ckpt_tag_sources "$run")" -- "$cur"))
      fi
    fi
  elif [[ $subcommand == inspect || $subcommand == convert || $subcommand == diff ]]; then
    _filedir
  else
    _filedir -d
  fi
}
complete -F _ckpt ckpt
