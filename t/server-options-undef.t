use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses http_get wait_for);
use Future::AsyncAwait;
use IO::Socket::IP;
use PAGI::Server;
use PAGI::Server::Config;

# Issue 9 item 13: an option passed as undef takes its default, as the
# reference server's `//` defaults do. Only access_log => undef means
# something else (no access log), per the runner contract.

my $noop = async sub { };

subtest 'every option with a default takes it when passed undef' => sub {
    my @checked;
    for my $name (PAGI::Server::Config->names) {
        next if $name eq 'app';
        my $default = PAGI::Server::Config->default($name);
        $default = $default->() if ref $default eq 'CODE';
        my $config = eval { PAGI::Server::Config->new(app => $noop, $name => undef) };
        ok $config, "$name => undef is accepted" or do { diag $@; next };
        if ($name eq 'access_log') {
            ok exists $config->{access_log} && !defined $config->{access_log}, 'access_log => undef still disables the access log';
            ok $config->is_explicit('access_log'), '... and counts as given';
            next;
        }
        is_deeply $config->{$name}, $default, "$name => undef takes the default (" . ($default // 'undef') . ')';
        ok !$config->is_explicit($name), "$name => undef does not count as given";
        push @checked, $name;
    }
    ok scalar(grep { $_ eq 'host' } @checked) && scalar(grep { $_ eq 'shutdown_timeout' } @checked), 'host and shutdown_timeout among them';
    my $server = PAGI::Server->new(app => $noop, map { ($_ => undef) } @checked);
    is $server->{config}{host}, '127.0.0.1', 'all at once through PAGI::Server->new: host';
    is $server->{config}{shutdown_timeout}, 30, 'all at once: shutdown_timeout';
    is $server->port, 5000, 'all at once: port';
    ok !eval { PAGI::Server->new(app => undef); 1 }, 'app => undef is still "required"';
    like $@, qr/option 'app' is required/, '... naming the option';
};

my $slow_started;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    if ($scope->{path} eq '/slow') {
        $slow_started = 1;
        await loop()->delay_future(after => 1);
    }
    my $body = join ' ', @{ $scope->{server} };
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};

subtest 'host => undef binds 127.0.0.1 only' => sub {
    my ($server, $port) = start_server(app => $app, host => undef);
    is $server->listeners->[0]{host}, '127.0.0.1', 'the listener is on 127.0.0.1';
    my $r = http_get($port, '/')->get;
    is $r->{body}, "127.0.0.1 $port", "the scope's server address is 127.0.0.1";
    # Every 127/8 address is local on Linux: a wildcard bind would answer here.
    my $other = IO::Socket::IP->new(PeerHost => '127.0.0.2', PeerPort => $port, Timeout => 5);
    my $why = $!;
    ok !$other, 'connecting through 127.0.0.2 is refused' or diag 'connected: the server listens on every interface';
    like "$why", qr/refused/i, '... with connection refused' if !$other;
    stop_server($server);
};

subtest 'shutdown_timeout => undef drains an in-flight request' => sub {
    my ($server, $port) = start_server(app => $app, shutdown_timeout => undef);
    $slow_started = 0;
    my $pending = raw_exchange($port, "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 20);
    ok wait_for(sub { $slow_started }, 10), 'the slow request is in the app';
    my $stopped = $server->shutdown;
    my ($r) = parse_responses($pending->get);
    is $r && $r->{status}, 200, 'the in-flight request got its response during the drain';
    is $r && $r->{body}, "127.0.0.1 $port", '... complete';
    $stopped->get;
    loop()->remove($server);
};

done_testing;
