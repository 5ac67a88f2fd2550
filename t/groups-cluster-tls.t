# Groups through a Redis reached over TLS with a password (issue 13): a
# redis-server listening only on a TLS port (a private CA made with openssl
# for this file), two pagi-server processes with --pubsub
# rediss://:PASSWORD@127.0.0.1:PORT?ca=CA. A publish on each node crosses
# to the other; the banner names the Redis without the password; a node that
# trusts only the system's roots cannot connect (the private CA is needed).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop wait_for);    # its import arms the file's alarm
use PAGI::Test::CLI qw(stop_cli stderr_of);
use PAGI::Test::PKI qw(need_tls_tools);
use PAGI::Test::Redis qw(need_redis);
use PAGI::Test::GroupsCluster qw(start_node member cmd cmd_ok group_texts until_crossed settle stats_of);

$SIG{PIPE} = 'IGNORE';
need_redis();
need_tls_tools();
my $pki = PAGI::Test::PKI->new;
$pki->ca('ca', 'Redis Test CA');
$pki->leaf('server', '/CN=localhost');
my $PASSWORD = 'tls-secret-pw-8231';
my $redis = PAGI::Test::Redis->start(password => $PASSWORD,
    tls => { cert => $pki->path('server.pem'), key => $pki->path('server.key'), ca => $pki->path('ca.pem') });
is($redis->command('PING'), 'PONG', 'redis-server answers on its TLS port');
my $url = $redis->url;
like($url, qr{\Arediss://:\Q$PASSWORD\E\@127\.0\.0\.1:\d+\?ca=}, "the URL: rediss:// with the password and ?ca=");

my ($na, $nb) = map { start_node('--pubsub', $url) } 1 .. 2;
my ($a) = member($na->{port}, join => 'secure', tag => 'a');
my ($b) = member($nb->{port}, join => 'secure', tag => 'b');
ok(until_crossed($a, [$b], 'secure'), 'a publish on node A reaches node B over TLS');
ok(until_crossed($b, [$a], 'secure'), 'and one on B reaches A');
is(cmd_ok($a, op => 'bcast', group => 'secure', text => 'over tls'), 0, 'a broadcast from A');
ok(wait_for(sub { group_texts($b, qr/\Aover tls\z/) }, 10), 'B got it');
my $n;
# Presence is written within about 20 ms of a join (debounced): wait for it.
ok(wait_for(sub { ($n = cmd_ok($b, op => 'cluster', group => 'secure')) == 2 }, 10), 'cluster_count 2') or diag("got $n");
is(stats_of($_)->{stats}{redis_connected}, 1, "node $_->{tag}: redis_connected") for $a, $b;

for my $node ($na, $nb) {
    my $err = stderr_of($node);
    like($err, qr{groups \(rooms and channels\) cross processes through rediss://\*\*\*\@127\.0\.0\.1:${\ $redis->port}},
        'the banner names the Redis with the password masked');
    unlike($err, qr/\Q$PASSWORD\E/, 'the password appears nowhere in the log') or diag($err);
}

# Without ?ca= the server certificate is checked against the system's roots: refused.
(my $no_ca = $url) =~ s/\?ca=.*//;
my $nc = start_node('--pubsub', $no_ca, { unconnected => 1 });
my ($c) = member($nc->{port}, join => 'secure', tag => 'c');
ok(wait_for(sub { stderr_of($nc) =~ /pubsub: lost/ }, 15), 'without the private CA the node cannot connect (logged)');
like(stderr_of($nc), qr/pubsub: lost rediss:\S+ \(connecting: [^\n]*certificate/, "... because the server certificate is not trusted");
is(stats_of($c)->{stats}{redis_connected}, 0, '... redis_connected 0');
my ($ok, $err) = cmd($c, op => 'bcast', group => 'secure', text => 'unverified');
ok(!$ok && $err =~ /\Agroups\.publish: redis unavailable/, "... its publishes fail with 'redis unavailable'");
unlike(stderr_of($nc), qr/\Q$PASSWORD\E/, '... and its log never shows the password') or diag(stderr_of($nc));
settle(0.3);
is(scalar(group_texts($b, qr/\Aunverified/)), 0, 'nothing reached the verified nodes from it');

$_->{c}->close for $a, $b, $c;
is(stop_cli($_), 0, 'SIGTERM: exits 0') for $na, $nb, $nc;
$redis->stop;
done_testing;
