# zsh -f zsh_complete.zsh COMPLETIONS_DIR LINE: types LINE and a TAB into an interactive zsh (in a pseudo-terminal,
# zsh/zpty) with the completions of COMPLETIONS_DIR, and prints what the terminal showed afterwards.
zmodload zsh/zpty
zpty shell zsh -f -i
zpty -w shell "unset zle_bracketed_paste; PS1=''; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
zpty -w -n shell "$2"$'\t'
sleep 1
out=''
while zpty -r -t shell chunk; do out+=$chunk; done
print -r -- "$out"
zpty -d shell
