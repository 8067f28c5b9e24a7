# bench/plot.gp: draws bench/run.sh's result as an SVG.
# gnuplot -e "datafile='...'; outfile='...'; heading='...'; ratios='...'" bench/plot.gp
#
# datafile: one line a scenario: "label" requests/s caddy_us app_us
# (medians; CPU microseconds per request). ratios: the targets as text,
# one line each ("\n"-separated), printed under the charts.
set terminal svg size 1100,600 dynamic enhanced font "sans,11" background rgb "white"
set output outfile
set datafile separator whitespace
set style data histograms
set style fill solid 0.85 border rgb "#333333"
set boxwidth 0.7
set grid ytics lc rgb "#dddddd"
set xtics rotate by -25 nomirror
set ytics nomirror
set key top right
set border 3

set multiplot layout 1,2 title heading font "sans,13" margins 0.07, 0.95, 0.38, 0.9 spacing 0.08
set title "requests/s (median of rounds; higher is better)"
set yrange [0:*]
set style histogram clustered gap 1
plot datafile using 2:xtic(1) lc rgb "#4c78a8" notitle, \
     '' using 0:2:(sprintf("%.0f", $2)) with labels offset 0,0.7 font "sans,9" notitle

set title "server CPU per request, µs (median; lower is better)"
set style histogram rowstacked gap 1
set key top left
# The ratios, under both charts: drawn once, with this last plot.
set label 1 ratios at screen 0.07, screen 0.2 left front font "monospace,10" noenhanced
plot datafile using 3:xtic(1) lc rgb "#f58518" title "Caddy", \
     '' using 4 lc rgb "#54a24b" title "app (altapp)", \
     '' using 0:($3+$4):(sprintf("%.0f", $3+$4)) with labels offset 0,0.7 font "sans,9" notitle
unset multiplot
