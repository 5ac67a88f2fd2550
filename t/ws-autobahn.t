# The Autobahn|Testsuite fuzzing client (cases 1 to 10, none excluded) against
# examples/04-websocket-echo with default options: every case runs, none FAILED.
# t/autobahn/run.pl does the work; this wraps it. Skips when wstest (a Python
# 2.7 venv made by ./setup.sh --websocket-clients) is missing, except under
# CI=true, where that is a failure.
use strict;
use warnings;
use Test::More;
use FindBin;
use POSIX ();

alarm($ENV{PAGI_TEST_TIMEOUT} || 900);    # run.pl bounds wstest itself at 600 s

my $script = "$FindBin::Bin/autobahn/run.pl";
my $ci     = ($ENV{CI} // '') eq 'true';

my $pid = open(my $out, '-|') // die "fork: $!";
if (!$pid) {
    open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
    { exec $^X, $script }
    print "exec $^X $script: $!\n";
    POSIX::_exit(127);
}
my $output = do { local $/; <$out> } // '';
close $out;
my $exit = $? >> 8;

if ($exit == 3) {
    my ($why) = $output =~ /^autobahn: (wstest not found.*)$/m;
    $why //= 'wstest not found';
    if ($ci) {
        fail("CI=true: Autobahn|Testsuite must run here: $why");
        done_testing;
        exit;
    }
    plan skip_all => "Autobahn|Testsuite not installed: $why";
}

is($exit, 0, 't/autobahn/run.pl passes: every case of 1.* to 10.* ran and none FAILED')
    or diag($output);
my ($behavior) = $output =~ /^autobahn: behavior: +(.*)$/m;
my ($close)    = $output =~ /^autobahn: behaviorClose: +(.*)$/m;
my ($ran)      = $output =~ /^autobahn: (\d+) cases in /m;
like($behavior // '', qr/\bFAILED 0\b/, 'behavior: zero FAILED');
like($close    // '', qr/\bFAILED 0\b/, 'behaviorClose: zero FAILED');
cmp_ok($ran // 0, '>=', 300, 'the report covers the cases 1.* to 10.* (301 in autobahntestsuite 0.8.2)');
note($behavior // '', "\n", $close // '');

done_testing;
