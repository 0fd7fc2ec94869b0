# fish completion for ckpt
set -l subcommands save resume list best latest rotate tag inspect diff convert
complete -c ckpt -f
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -l help -d 'Show help'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -l version -d 'Show the version'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a save -d 'Train the embedded model, saving checkpoints'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a resume -d 'Continue a run from a checkpoint'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a list -d 'List the checkpoints of a run directory'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a best -d 'Print the best checkpoint; link or export it'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a latest -d 'Print the newest complete checkpoint, for job scripts'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a rotate -d 'Delete old checkpoints safely'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a tag -d 'Keep a checkpoint under a name that rotate never deletes'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a inspect -d 'Show what a checkpoint holds'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a diff -d 'Compare two weights files, checkpoints or archives'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a convert -d 'Convert pickle <-> safetensors; archive checkpoints'
complete -c ckpt -n "not __fish_seen_subcommand_from $subcommands help" -a help -d 'Show the options of a subcommand'
complete -c ckpt -n "__fish_seen_subcommand_from help; and not __fish_seen_subcommand_from $subcommands" -a "$subcommands"
complete -c ckpt -n "__fish_seen_subcommand_from $subcommands" -l help -d 'Show the options of the subcommand'

complete -c ckpt -n "__fish_seen_subcommand_from list best latest rotate" -a '(__fish_complete_directories)'
complete -c ckpt -n "__fish_seen_subcommand_from list latest rotate" -l recursive -x -a '(__fish_complete_directories)' -d 'Every run directory at or below ROOT'
complete -c ckpt -n "__fish_seen_subcommand_from list best rotate" -l metric -x -a 'eval_loss eval_accuracy' -d 'Find the best by this metric'
complete -c ckpt -n "__fish_seen_subcommand_from list best rotate" -l mode -x -a 'min max' -d 'min or max for --metric'
complete -c ckpt -n "__fish_seen_subcommand_from list rotate" -l sort -x -a 'step mtime' -d 'Order checkpoints'
complete -c ckpt -n "__fish_seen_subcommand_from list rotate" -l use-mtime -d 'Order checkpoints by mtime'
complete -c ckpt -n "__fish_seen_subcommand_from list best latest rotate inspect" -l json -d 'Print JSON'
complete -c ckpt -n "__fish_seen_subcommand_from best" -l link -x -d 'Create or replace a symlink to the best'
complete -c ckpt -n "__fish_seen_subcommand_from best" -l export -x -a '(__fish_complete_directories)' -d 'Write the best model into DIR'
complete -c ckpt -n "__fish_seen_subcommand_from latest" -l verify -d 'Check it fully first; fall back to the next newest that verifies'
complete -c ckpt -n "__fish_seen_subcommand_from latest" -l archives -d 'Consider archived checkpoints too'
complete -c ckpt -n "__fish_seen_subcommand_from latest" -l restore-to -x -a '(__fish_complete_directories)' -d 'Restore an archive picked into this new directory'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l keep -x -d 'Keep the newest N complete checkpoints'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l keep-every -x -d 'Also keep steps divisible by K'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l stale-after -x -d 'Remove staging dirs and abandoned checkpoints older than this'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l archive -d 'Archive checkpoints before deleting them'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l archive-dir -r -a '(__fish_complete_directories)' -d 'Archive into this directory'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l keep-archives -x -d 'Keep at most M archives'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l dry-run -d 'Show decisions, change nothing'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -l no-wait -d 'Fail instead of waiting for the lock'
complete -c ckpt -n "__fish_seen_subcommand_from rotate" -s q -l quiet -d 'Print nothing unless there is an error'
# After tag: the run directory, then its checkpoints and archives as list names them (with --delete, its named
# checkpoints: directories holding trainer_state.json that are no checkpoint-N or staging directory), then nothing.
function __ckpt_tag_arguments
    set -l run
    set -l positional 0
    set -l delete 0
    for word in (commandline -opc)[3..-1]
        switch $word
            case --delete
                set delete 1
            case '-*'
            case '*'
                test $positional -eq 0; and set run $word
                set positional (math $positional + 1)
        end
    end
    if test $positional -eq 0
        __fish_complete_directories
    else if test $positional -eq 1; and test -d "$run"
        if test $delete -eq 1
            __ckpt_named $run
        else
            for d in $run/checkpoint-*/
                basename $d
            end
            for a in $run/checkpoint-*.ckpt $run/archive/checkpoint-*.ckpt
                string replace -- $run/ '' $a
            end
        end
    end
end
complete -c ckpt -n "__fish_seen_subcommand_from tag" -a '(__ckpt_tag_arguments)'
complete -c ckpt -n "__fish_seen_subcommand_from tag" -l delete -d 'Delete the named checkpoint NAME'
complete -c ckpt -n "__fish_seen_subcommand_from tag" -l json -d 'Print the result as JSON'
complete -c ckpt -n "__fish_seen_subcommand_from inspect" -l summary -d 'Print only the summary'
complete -c ckpt -n "__fish_seen_subcommand_from inspect" -l verify -d 'Check CRCs, tensor extents and consistency'
complete -c ckpt -n "__fish_seen_subcommand_from inspect" -F
complete -c ckpt -n "__fish_seen_subcommand_from convert" -F
complete -c ckpt -n "__fish_seen_subcommand_from diff" -F
complete -c ckpt -n "__fish_seen_subcommand_from diff" -l tolerance -x -d 'Elements within tolerance + rtol * |b| count as the same'
complete -c ckpt -n "__fish_seen_subcommand_from diff" -l rtol -x -d 'The relative part of that bound'
complete -c ckpt -n "__fish_seen_subcommand_from diff" -l only -x -d 'Compare only names matching this glob (repeatable)'
complete -c ckpt -n "__fish_seen_subcommand_from diff" -l all -d 'List identical tensors and equal values too'
complete -c ckpt -n "__fish_seen_subcommand_from diff" -l json -d 'Print every tensor and value compared as JSON'
complete -c ckpt -n "__fish_seen_subcommand_from diff" -s q -l quiet -d 'Print nothing: the exit status says'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -l to -x -a 'safetensors pytorch archive dir' -d 'Target format'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -s o -l output -r -d 'Destination'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -l max-shard-size -x -a '500MB 1GB 2GB 5GB 10GB' -d 'Split weights into shards'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -l dtype -x -a 'bf16 fp16 fp32' -d 'Cast floating weights'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -l include-state -d 'Also convert optimizer, scheduler, scaler, rng'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -l consolidate -d 'Merge optimizer shards, or DeepSpeed ZeRO or FSDP shards into one model'
complete -c ckpt -n "__fish_seen_subcommand_from convert rotate" -l level -x -d 'zstd level of archives'
complete -c ckpt -n "__fish_seen_subcommand_from convert rotate" -l threads -x -d 'Threads compressing archives'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -l dry-run -d 'Show what would be written'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -l force -d 'Replace an existing destination (an earlier output of ckpt)'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -l json -d 'Print a JSON summary'
complete -c ckpt -n "__fish_seen_subcommand_from convert" -s q -l quiet -d 'Print nothing unless there is an error'

# The named checkpoints of run directory $argv[1]: directories (not symlinks) holding trainer_state.json that are no
# checkpoint-N or staging directory, as ckpt list shows them.
function __ckpt_named
    for d in $argv[1]/*/
        set -l name (basename $d)
        if not test -L $argv[1]/$name; and test -e $argv[1]/$name/trainer_state.json; and not string match -qr -- '^(checkpoint-[0-9]+|tmp-checkpoint-.*)$' $name
            echo $name
        end
    end
end

# The checkpoint-N directories of the run directory named earlier on the line, its archived checkpoints and its
# named checkpoints.
function __ckpt_checkpoints
    for word in (commandline -opc)[3..-1]
        if not string match -q -- '-*' $word; and test -d $word
            for d in $word/checkpoint-*/
                basename $d
            end
            for a in $word/archive/checkpoint-*.ckpt
                basename $a .ckpt
            end
            __ckpt_named $word
            return
        end
    end
end
complete -c ckpt -n "__fish_seen_subcommand_from resume" -a '(__fish_complete_directories)'
complete -c ckpt -n "__fish_seen_subcommand_from resume" -l from -x -a '(__ckpt_checkpoints)' -d 'Checkpoint to resume from'
complete -c ckpt -n "__fish_seen_subcommand_from save" -l output-dir -x -a '(__fish_complete_directories)' -d 'The run directory'
complete -c ckpt -n "__fish_seen_subcommand_from save" -l overwrite-output-dir -d "Delete an earlier run's checkpoints there first"
complete -c ckpt -n "__fish_seen_subcommand_from save" -l resume-if-exists -d "Continue an earlier run's checkpoints there"
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l save-name -x -d 'When training finishes, keep its last checkpoint as RUN_DIR/NAME too'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l json -d 'Print a JSON summary'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -s q -l quiet -d 'Print nothing unless there is an error'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -s v -l verbose -d 'Print every log record as a JSON line on stdout'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l input-size -x -d 'Features per synthetic example'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l hidden-size -x -d 'Width of each hidden layer'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l num-layers -x -d 'Hidden layers'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l num-labels -x -d 'Classes of the synthetic task'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l dropout -x -d 'Dropout probability'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l max-steps -x -d 'Optimizer steps to train'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l num-train-epochs -x -d 'Epochs to train'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l per-device-train-batch-size -x -d 'Training batch size'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l per-device-eval-batch-size -x -d 'Evaluation batch size'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l learning-rate -x -d 'Peak learning rate'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l weight-decay -x -d 'Adamw weight decay'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l adam-beta1 -x -d 'Adamw beta1'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l adam-beta2 -x -d 'Adamw beta2'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l adam-epsilon -x -d 'Adamw epsilon'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l max-grad-norm -x -d 'Gradient clipping norm'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l warmup-steps -x -d 'Linear warmup steps'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l logging-steps -x -d 'Log every n steps'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l eval-steps -x -d 'Evaluate every n steps'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l save-steps -x -d 'Save every n steps'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l save-total-limit -x -d 'Keep at most n checkpoints'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l metric-for-best-model -x -a 'eval_loss eval_accuracy' -d 'Metric deciding the best checkpoint'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l greater-is-better -d 'A greater metric is better'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l no-greater-is-better -d 'A smaller metric is better'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l load-best-model-at-end -d 'Save the best weights as the final model'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l no-load-best-model-at-end -d 'Keep the last weights'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l save-safetensors -d 'Write model.safetensors'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l no-save-safetensors -d 'Write pytorch_model.bin'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l max-shard-size -x -a '500MB 1GB 2GB 5GB 10GB' -d 'Shard weights larger than this'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l seed -x -d 'Seed of every generator and the dataset'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l fp16 -d 'Dynamic loss scaling with fp16 gradients'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l no-fp16 -d 'No loss scaling'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l async-save -d 'Write checkpoints in the background'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l no-async-save -d 'Write checkpoints synchronously'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l shard-optimizer -d 'Each process keeps and saves its share of the optimizer state'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l no-shard-optimizer -d 'Every process keeps the whole optimizer state'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l nproc-per-node -x -d 'Worker processes on this machine'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l nnodes -x -d 'Machines in the group'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l node-rank -x -d 'Index of this machine'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l master-addr -x -a '(__fish_print_hostnames)' -d 'Address of node 0'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l master-port -x -d 'Rendezvous port'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l train-examples -x -d 'Training examples'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l eval-examples -x -d 'Evaluation examples'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l input-noise -x -d 'Input noise standard deviation'
complete -c ckpt -n "__fish_seen_subcommand_from save resume" -l threads -x -d 'Torch intra-op threads'
