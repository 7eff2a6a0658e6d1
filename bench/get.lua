-- wrk script: GET the URL given on the command line (list scenarios for every system).
dofile("bench/report.lua")
