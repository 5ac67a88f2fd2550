# PAGI::App::WrapPSGI: the PSGI environment a request gets (PSGI 1.1,
# PAGI-SPEC 6), over real sockets to an in-process PAGI::Server.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses);
use JSON::PP ();
use PAGI::App::WrapPSGI;

my $json = JSON::PP->new->canonical;
# Echoes the environment's plain values (and what psgi.input holds) as JSON.
my $psgi = sub {
    my ($env) = @_;
    my %out = map { $_ => $env->{$_} } grep { !ref $env->{$_} } keys %$env;
    my $input = $env->{'psgi.input'};
    my $body = '';
    while ($input->read(my $buf, 8192)) { $body .= $buf }
    $out{body} = $body;
    my $again;
    $out{rewound} = seek($input, 0, 0) && $input->read($again, 3) ? $again : undef;
    $out{version} = join '.', @{ $env->{'psgi.version'} };
    $out{state_pool} = $env->{'pagi.state'}{pool};
    $out{scope_type} = $env->{'pagi.scope'}{type};
    $out{errors_print} = $env->{'psgi.errors'}->can('print') ? 1 : 0;
    # Bytes, not characters: the body is the hex of PATH_INFO.
    $out{path_hex} = unpack 'H*', $env->{PATH_INFO};
    $out{path_is_utf8} = utf8::is_utf8($env->{PATH_INFO}) ? 1 : 0;
    return [ 200, [ 'Content-Type' => 'application/json' ], [ $json->encode(\%out) ] ];
};
my $wrapped = PAGI::App::WrapPSGI->new(psgi_app => $psgi)->to_app;
# PAGI code next to the PSGI app fills the lifespan state; PSGI sees it.
my $app = sub {
    my ($scope) = @_;
    $scope->{state}{pool} = 'shared-pool' if $scope->{type} eq 'lifespan';
    return $wrapped->(@_);
};

sub env_of {
    my ($port, $request) = @_;
    my $raw = raw_exchange($port, $request, timeout => 10)->get;
    my ($r) = parse_responses($raw);
    is $r->{status}, 200, 'status 200' or diag $raw;
    return $json->decode($r->{body});
}

my ($server, $port) = start_server(app => $app);

subtest 'request line, headers, constants' => sub {
    my $env = env_of($port, "GET /a%2Fb/caf%C3%A9?x=1&y=%20 HTTP/1.1\r\nHost: example.test:99\r\n"
        . "Cookie: a=1\r\nX-Dup: one\r\nCookie: b=2\r\nX-Dup: two\r\nUser-Agent: t\r\nConnection: close\r\n\r\n");
    is $env->{REQUEST_METHOD}, 'GET', 'REQUEST_METHOD';
    is $env->{SCRIPT_NAME}, '', 'SCRIPT_NAME empty without root_path';
    is $env->{path_hex}, unpack('H*', "/a/b/caf\xc3\xa9"), 'PATH_INFO: %2F is a / byte, %C3%A9 two bytes';
    is $env->{path_is_utf8}, 0, 'PATH_INFO is a byte string';
    is $env->{REQUEST_URI}, '/a%2Fb/caf%C3%A9?x=1&y=%20', 'REQUEST_URI is the raw target';
    is $env->{QUERY_STRING}, 'x=1&y=%20', 'QUERY_STRING raw';
    is $env->{SERVER_PROTOCOL}, 'HTTP/1.1', 'SERVER_PROTOCOL';
    is $env->{SERVER_NAME}, '127.0.0.1', 'SERVER_NAME from the scope server';
    is $env->{SERVER_PORT}, $port, 'SERVER_PORT';
    is $env->{REMOTE_ADDR}, '127.0.0.1', 'REMOTE_ADDR';
    like $env->{REMOTE_PORT}, qr/\A\d+\z/, 'REMOTE_PORT';
    is $env->{HTTP_HOST}, 'example.test:99', 'HTTP_HOST';
    is $env->{HTTP_COOKIE}, 'a=1; b=2', 'Cookie headers joined with "; "';
    is $env->{HTTP_X_DUP}, 'one, two', 'repeated headers joined with ", "';
    is $env->{HTTP_USER_AGENT}, 't', 'HTTP_USER_AGENT';
    ok !exists $env->{CONTENT_LENGTH} && !exists $env->{CONTENT_TYPE}, 'no CONTENT_* without a body';
    is $env->{version}, '1.1', 'psgi.version [1, 1]';
    is $env->{'psgi.url_scheme'}, 'http', 'psgi.url_scheme';
    is_deeply [ @$env{qw(psgi.multithread psgi.multiprocess psgi.run_once psgi.nonblocking psgi.streaming psgix.input.buffered)} ],
        [ 0, 0, 0, 1, 1, 1 ], 'multithread 0, multiprocess 0 (one process), run_once 0, nonblocking, streaming, input.buffered';
    is $env->{errors_print}, 1, 'psgi.errors has print';
    is $env->{state_pool}, 'shared-pool', 'pagi.state is the lifespan state';
    is $env->{scope_type}, 'http', 'pagi.scope';
};

subtest 'bodies: Content-Length and chunked' => sub {
    my $env = env_of($port, "POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        . "Content-Length: 11\r\nConnection: close\r\n\r\nname=value!");
    is $env->{CONTENT_TYPE}, 'application/x-www-form-urlencoded', 'CONTENT_TYPE';
    is $env->{CONTENT_LENGTH}, 11, 'CONTENT_LENGTH';
    ok !exists $env->{HTTP_CONTENT_LENGTH} && !exists $env->{HTTP_CONTENT_TYPE}, 'no HTTP_CONTENT_*';
    is $env->{body}, 'name=value!', 'psgi.input holds the body';
    is $env->{rewound}, 'nam', 'psgi.input seeks back';
    $env = env_of($port, "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        . "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    is $env->{body}, 'hello world', 'chunked body de-chunked';
    is $env->{CONTENT_LENGTH}, 11, 'CONTENT_LENGTH set to the size of a chunked body';
    ok !exists $env->{HTTP_TRANSFER_ENCODING}, 'HTTP_TRANSFER_ENCODING removed once read whole';
};

subtest 'root_path splits SCRIPT_NAME and PATH_INFO' => sub {
    $server->configure(root_path => '/mnt/app');
    my $env = env_of($port, "GET /mnt/app/x%2Fy HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    is $env->{SCRIPT_NAME}, '/mnt/app', 'SCRIPT_NAME is root_path';
    is $env->{path_hex}, unpack('H*', '/x/y'), 'PATH_INFO is the rest, unescaped';
    is $env->{REQUEST_URI}, '/mnt/app/x%2Fy', 'REQUEST_URI keeps the whole target';
    $env = env_of($port, "GET /mnt/app HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    is $env->{path_hex}, '', 'the mount point itself: PATH_INFO empty';
    $env = env_of($port, "GET /mnt/application HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    is $env->{path_hex}, unpack('H*', '/mnt/application'), 'a longer segment is not the mount point';
    $server->configure(root_path => '');
};

subtest 'HTTP/1.0' => sub {
    my $env = env_of($port, "GET /old HTTP/1.0\r\n\r\n");
    is $env->{SERVER_PROTOCOL}, 'HTTP/1.0', 'SERVER_PROTOCOL HTTP/1.0';
};

subtest 'new() checks its options' => sub {
    ok !eval { PAGI::App::WrapPSGI->new; 1 }, 'psgi_app required';
    like $@, qr/'psgi_app' is required/, 'message names psgi_app';
    ok !eval { PAGI::App::WrapPSGI->new(psgi_app => 'x'); 1 }, 'psgi_app must be code';
    like $@, qr/'psgi_app' must be a code reference/, 'message says so';
    ok !eval { PAGI::App::WrapPSGI->new(psgi_app => sub {}, bogus => 1); 1 }, 'unknown option';
    like $@, qr/unknown option 'bogus'/, 'message names it';
};

stop_server($server);
done_testing;
