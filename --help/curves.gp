# Training curves: gnuplot curves.gp (in this directory) writes curves.svg and curves.png.
# Solid: validation; dashed: training; a circle: the best epoch, whose weights were tested.

set terminal svg size 1000,420 dynamic font 'sans,11'
set output 'curves.svg'
set multiplot layout 1,2
set grid
set key noenhanced top right
set xlabel 'epoch'
set xtics 5
set title 'loss'
set ylabel 'cross-entropy loss'
plot 'curves.dat' index 0 using 1:4 with lines lw 2 lc 1 title 'ann', \
     '' index 0 using 1:2 with lines dt 2 lc 1 notitle, \
     '' index 0 using 1:($6 == 1 ? $4 : 1/0) with points pt 6 ps 2 lc 1 notitle, \
     'curves.dat' index 1 using 1:4 with lines lw 2 lc 2 title 'basic', \
     '' index 1 using 1:2 with lines dt 2 lc 2 notitle, \
     '' index 1 using 1:($6 == 1 ? $4 : 1/0) with points pt 6 ps 2 lc 2 notitle, \
     'curves.dat' index 2 using 1:4 with lines lw 2 lc 3 title 'deeper', \
     '' index 2 using 1:2 with lines dt 2 lc 3 notitle, \
     '' index 2 using 1:($6 == 1 ? $4 : 1/0) with points pt 6 ps 2 lc 3 notitle
set title 'accuracy'
set ylabel 'accuracy'
plot 'curves.dat' index 0 using 1:5 with lines lw 2 lc 1 title 'ann', \
     '' index 0 using 1:3 with lines dt 2 lc 1 notitle, \
     '' index 0 using 1:($6 == 1 ? $5 : 1/0) with points pt 6 ps 2 lc 1 notitle, \
     'curves.dat' index 1 using 1:5 with lines lw 2 lc 2 title 'basic', \
     '' index 1 using 1:3 with lines dt 2 lc 2 notitle, \
     '' index 1 using 1:($6 == 1 ? $5 : 1/0) with points pt 6 ps 2 lc 2 notitle, \
     'curves.dat' index 2 using 1:5 with lines lw 2 lc 3 title 'deeper', \
     '' index 2 using 1:3 with lines dt 2 lc 3 notitle, \
     '' index 2 using 1:($6 == 1 ? $5 : 1/0) with points pt 6 ps 2 lc 3 notitle
unset multiplot

set terminal pngcairo size 1000,420 font 'sans,10'
set output 'curves.png'
set multiplot layout 1,2
set grid
set key noenhanced top right
set xlabel 'epoch'
set xtics 5
set title 'loss'
set ylabel 'cross-entropy loss'
plot 'curves.dat' index 0 using 1:4 with lines lw 2 lc 1 title 'ann', \
     '' index 0 using 1:2 with lines dt 2 lc 1 notitle, \
     '' index 0 using 1:($6 == 1 ? $4 : 1/0) with points pt 6 ps 2 lc 1 notitle, \
     'curves.dat' index 1 using 1:4 with lines lw 2 lc 2 title 'basic', \
     '' index 1 using 1:2 with lines dt 2 lc 2 notitle, \
     '' index 1 using 1:($6 == 1 ? $4 : 1/0) with points pt 6 ps 2 lc 2 notitle, \
     'curves.dat' index 2 using 1:4 with lines lw 2 lc 3 title 'deeper', \
     '' index 2 using 1:2 with lines dt 2 lc 3 notitle, \
     '' index 2 using 1:($6 == 1 ? $4 : 1/0) with points pt 6 ps 2 lc 3 notitle
set title 'accuracy'
set ylabel 'accuracy'
plot 'curves.dat' index 0 using 1:5 with lines lw 2 lc 1 title 'ann', \
     '' index 0 using 1:3 with lines dt 2 lc 1 notitle, \
     '' index 0 using 1:($6 == 1 ? $5 : 1/0) with points pt 6 ps 2 lc 1 notitle, \
     'curves.dat' index 1 using 1:5 with lines lw 2 lc 2 title 'basic', \
     '' index 1 using 1:3 with lines dt 2 lc 2 notitle, \
     '' index 1 using 1:($6 == 1 ? $5 : 1/0) with points pt 6 ps 2 lc 2 notitle, \
     'curves.dat' index 2 using 1:5 with lines lw 2 lc 3 title 'deeper', \
     '' index 2 using 1:3 with lines dt 2 lc 3 notitle, \
     '' index 2 using 1:($6 == 1 ? $5 : 1/0) with points pt 6 ps 2 lc 3 notitle
unset multiplot
