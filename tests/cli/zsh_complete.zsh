# zsh -f zsh_complete.zsh COMPLETIONS_DIR LINE: types LINE and a TAB into an interactive zsh (in a pseudo-terminal,
# zsh/zpty) with the completions of COMPLETIONS_DIR, and prints what the terminal showed afterwards.
# No fixed waits: each read blocks until a marker appears (the caller's timeout is the deadline). zle handles keys in
# order, so a widget bound to the key typed after the TAB prints its marker once the completion has been drawn; the
# markers are spelled with quotes inside when typed, so the shell's echo of the commands cannot match them.
zmodload zsh/zpty
zpty shell zsh -f -i
zpty -w shell "unset zle_bracketed_paste; PS1=''; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D;"\
" completion-drawn() { print -n '<DR''AWN>' }; zle -N completion-drawn; bindkey '^Xd' completion-drawn; print RE''ADY"
zpty -r shell startup '*READY*'
zpty -w -n shell "$2"$'\t\x18d'
zpty -r shell out '*<DRAWN>*'
print -r -- "${out%<DRAWN>*}"
zpty -d shell
