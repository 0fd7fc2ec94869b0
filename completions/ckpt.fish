# fish completion for ckpt
set -l subcommands inspect
complete -c ckpt -f
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -l help -d 'Show help'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -l version -d 'Show the version'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -a inspect -d 'Show what a checkpoint holds'
complete -c ckpt -n "__fish_seen_subcommand_from inspect" -l json -d 'Print one JSON document'
complete -c ckpt -n "__fish_seen_subcommand_from inspect" -l verify -d 'Check CRCs, tensor extents and consistency'
complete -c ckpt -n "__fish_seen_subcommand_from inspect" -F
