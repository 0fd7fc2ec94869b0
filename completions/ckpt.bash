# bash completion for ckpt
_ckpt() {
  local cur prev words cword
  _init_completion || return

  local subcommands="inspect"
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

  case $subcommand in
    inspect)
      if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "--json --verify --help" -- "$cur"))
      else
        _filedir
      fi
      ;;
  esac
}
complete -F _ckpt ckpt
