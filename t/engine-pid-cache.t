# The engine refuses calls from a forked copy by comparing pids; that check
# runs on every XS call, so it must not cost a getpid(2) each time (issue 9
# item 7). strace counts the getpid calls of an engine serving 200 requests.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server;    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(ROOT wait_until);
use PAGI::Test::Engine qw(client read_response get_request);
use File::Temp ();
use POSIX ();

my ($strace) = grep { -x } map { "$_/strace" } split /:/, $ENV{PATH} // '';
unless ($strace) {
    if (($ENV{CI} // '') eq 'true') { fail('CI=true and strace is missing: ./setup.sh installs it'); done_testing; exit }
    plan skip_all => 'strace is not installed (apt-get install strace)';
}

my $dir = File::Temp->newdir;
my $root = ROOT();
open my $fh, '>', "$dir/serve.pl" or die $!;
print {$fh} <<'PERL';
use strict; use warnings;
use PAGI::Test::Engine qw(started_engine pump_until take count_kind);
use PAGI::Server::Native qw(:events);
my ($want, $port_file) = @ARGV;
my $s = started_engine();
open my $out, '>', "$port_file.tmp" or die $!; print {$out} $s->{port}; close $out;
rename "$port_file.tmp", $port_file or die $!;
my $served = 0;
while ($served < $want) {
    pump_until($s, sub { count_kind($_[0], EV_REQUEST) }, 20) or last;
    for my $ev (take($s, EV_REQUEST)) {
        $s->{engine}->respond_full($ev->[1], 200, [], 'ok');
        $served++;
    }
    $s->{engine}->flush;
}
pump_until($s, sub { 0 }, 0.3);
$s->{engine}->shutdown(0);
pump_until($s, sub { count_kind($_[0], EV_STOPPED) }, 5);
PERL
close $fh;

my $trace = "$dir/trace.txt";
my $port_file = "$dir/port";
my $pid = fork // die "fork: $!";
if (!$pid) {
    open STDOUT, '>', '/dev/null';
    open STDERR, '>', "$dir/stderr";
    { exec $strace, '-f', '-e', 'trace=getpid', '-o', $trace,
        $^X, "-I$root/t/lib", "-I$root/lib", "-I$root/blib/lib", "-I$root/blib/arch", "$dir/serve.pl", 200, $port_file }
    POSIX::_exit(127);
}
ok(wait_until(sub { -s $port_file }, 30), 'the traced engine is listening') or BAIL_OUT('no engine: ' . `cat $dir/stderr`);
my $port = do { open my $p, '<', $port_file or die $!; local $/; <$p> };
my $c = client($port);
my $answered = 0;
for my $n (1 .. 200) {
    print {$c} get_request("/$n");
    my $r = read_response($c, 10) or last;
    $answered++ if $r->{body} eq 'ok';
}
is($answered, 200, '200 requests answered');
close $c;
ok(wait_until(sub { waitpid($pid, POSIX::WNOHANG()) == $pid }, 30), 'the traced engine exited');
my $calls = () = do { open my $t, '<', $trace or die $!; local $/; <$t> } =~ /getpid\(\)/g;
cmp_ok($calls, '<', 50, "getpid called $calls times for 200 requests (a cached pid, not one call per XS call)");

done_testing;
