# F1 per class and model: gnuplot classes.gp writes classes.svg and classes.png.

set terminal svg size 1000,420 dynamic font 'sans,11'
set output 'classes.svg'
set title 'F1 per class (mean over the seeds)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set yrange [0:1]
set grid ytics
set key noenhanced top left horizontal
set xtics noenhanced rotate by -30
plot for [i=2:4] 'classes.dat' using i:xtic(1) title columnheader(i)

set terminal pngcairo size 1000,420 font 'sans,10'
set output 'classes.png'
set title 'F1 per class (mean over the seeds)'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set yrange [0:1]
set grid ytics
set key noenhanced top left horizontal
set xtics noenhanced rotate by -30
plot for [i=2:4] 'classes.dat' using i:xtic(1) title columnheader(i)
