# Sourced by scripts/perplexity.sh and scripts/heatmap-example.sh: the Python standard library
# sources of this machine as a corpus, split by file into WORK/train.txt and WORK/valid.txt
# (every 20th file, in sorted order, is held out); WORK/files.txt lists them all.
lib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
find "$lib" -name '*.py' -not -path '*/site-packages/*' -not -path '*/test/*' \
  -not -path '*/tests/*' -not -path '*/idlelib/*' | LC_ALL=C sort >"$WORK/files.txt"
awk 'NR % 20 == 0' "$WORK/files.txt" >"$WORK/valid.txt"
awk 'NR % 20 != 0' "$WORK/files.txt" >"$WORK/train.txt"
echo "corpus: $lib ($(python3 --version)), $(wc -l <"$WORK/train.txt") training files," \
  "$(wc -l <"$WORK/valid.txt") validation files ($(cat $(cat "$WORK/valid.txt") | wc -c) bytes)"
