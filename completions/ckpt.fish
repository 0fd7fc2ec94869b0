# fish completion for ckpt
set -l subcommands list best rotate inspect
complete -c ckpt -f
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -l help -d 'Show help'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -l version -d 'Show the version'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -a list -d 'List the checkpoints of a run directory'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -a best -d 'Print the best checkpoint; link or export it'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -a rotate -d 'Delete old checkpoints safely'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands" -a inspect -d 'Show what a checkpoint holds'

complete -c ckpt -n "__fish_seen_subcommand_from list best rotate" -a '(__fish_complete_directories)'
complete -c ckpt -n "__fish_seen_subcommand_from list best rotate" -l metric -x -a 'eval_loss eval_accuracy' -d 'Find the best by this metric'
complete -c ckpt -n "__fish_seen_subcommand_from list best rotate" -l mode -x -a 'min max' -d 'min or max for --metric'
complete -c ckpt -n "__fish_seen_subcommand_from list rotate" -l sort -x -a 'step mtime' -d 'Order checkpoints'
complete -c ckpt -n "__fish_seen_subcommand_from list best rotate inspect" -l json -d 'Print JSON'
complete -c ckpt -n "__fish_seen_subcommand_from best" -l link -x -d 'Create or replace a symlink to the best'
complete -c ckpt -n "__fish_seen_subcommand_from best" -l export -x -a '(__fish_complete_directories)' -d 'Write the best model into DIR'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l keep -x -d 'Keep the newest N complete checkpoints'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l keep-every -x -d 'Also keep steps divisible by K'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l stale-after -x -d 'Remove incomplete/staging dirs older than this'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l dry-run -d 'Show decisions, change nothing'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l no-wait -d 'Fail instead of waiting for the lock'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -s q -l quiet -d 'Print nothing unless there is an error'
complete -c ckpt -n "__fish_seen_subcommand_from inspect" -l verify -d 'Check CRCs, tensor extents and consistency'
complete -c ckpt -n "__fish_seen_subcommand_from inspect" -F
