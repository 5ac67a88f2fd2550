package PAGI::Server::Config;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();

# Every option of PAGI::Server (PAGI-SPEC 7.1) with its default. `engine`
# marks options handed to the Rust engine under the same name; `todo` marks
# options whose feature is not built yet: setting them to anything but their
# default croaks instead of being silently ignored.
my %OPTIONS = (
    app                      => { required => 1 },
    host                     => { default => '127.0.0.1' },
    port                     => { default => 5000, check => \&_port },
    quiet                    => { default => 0 },
    access_log               => { default => \*STDERR },
    access_log_format        => { default => 'clf', check => sub {
        require PAGI::Server::AccessLog;
        PAGI::Server::AccessLog->is_valid($_[0]) ? undef : ($@ =~ s/ at \S+ line \d+\.?\n\z//r);
    } },
    log_level                => { default => 'info', check => sub { $_[0] =~ /\A(?:debug|info|warn|error)\z/ ? undef : 'must be debug, info, warn or error' } },
    loop_type                => { default => undef, check => sub { $_[0] =~ /\A[A-Za-z]\w*(?:::\w+)*\z/ ? undef : 'is not a loop class name' } },
    listener_backlog         => { default => 2048, check => \&_positive },
    max_body_size            => { default => 10_000_000, engine => 1, check => \&_non_negative },
    max_header_size          => { default => 8192, engine => 1, check => \&_positive },
    max_header_count         => { default => 100, engine => 1, check => \&_positive },
    max_request_line_size    => { default => 8192, engine => 1, check => \&_positive },
    timeout                  => { default => 60, engine => 1, check => \&_seconds },
    header_timeout           => { default => 30, engine => 1, check => \&_seconds },
    write_high_watermark     => { default => 65536, engine => 1, check => \&_positive },
    write_low_watermark      => { default => 16384, engine => 1, check => \&_non_negative },
    server_header            => { default => "PAGI-Server-Native/$VERSION", engine => 1 },
    shutdown_timeout         => { default => 30, check => \&_seconds },
    body_timeout             => { default => 60, engine => 1, check => \&_seconds },
    request_timeout          => { default => 0, engine => 1, check => \&_seconds },
    max_connections          => { default => 0, engine => 1, check => \&_non_negative },
    max_ws_frame_size        => { default => 16 * 1024 * 1024, engine => 1, check => \&_positive },
    ws_ping_interval         => { default => 20, engine => 1, check => \&_seconds },
    ws_ping_timeout          => { default => 20, engine => 1, check => \&_seconds },
    # The engine reads WebSocket messages only as the app takes them (at most
    # 16 ahead), so its queue never reaches this bound; accepted for
    # configurations written for the reference server.
    max_receive_queue        => { default => 1000, check => \&_positive },
    # The engine sends files with sendfile(2) and never blocks the loop, so
    # there is nothing to tune; kept so configurations written for the
    # reference server still load.
    sync_file_threshold      => { default => 65536, check => \&_non_negative },
    validate_events          => { default => sub { ($ENV{PAGI_ENV} // '') eq 'development' ? 1 : 0 } },
    lifespan_mode            => { default => 'auto', check => sub { $_[0] =~ /\A(?:auto|on|off)\z/ ? undef : 'must be auto, on or off' } },
    lifespan_startup_timeout => { default => 30, check => \&_seconds },
    extensions               => { default => {}, check => \&_extensions },

    # Known, not built yet.
    socket                     => { todo => 1 },
    socket_mode                => { todo => 1 },
    listen                     => { todo => 1 },
    ssl                        => { todo => 1 },
    disable_tls                => { todo => 1, default => 0 },
    workers                    => { todo => 1, default => 0 },
    reuseport                  => { todo => 1, default => 0 },
    max_requests               => { todo => 1, default => 0 },
    ws_idle_timeout            => { todo => 1, default => 0 },
    sse_idle_timeout           => { todo => 1, default => 0 },
    heartbeat_timeout          => { todo => 1, default => 50 },
    http2                      => { todo => 1, default => 0 },
    h2_max_concurrent_streams  => { todo => 1, default => 100 },
    h2_initial_window_size     => { todo => 1, default => 65535 },
    h2_max_frame_size          => { todo => 1, default => 16384 },
    h2_enable_push             => { todo => 1, default => 0 },
    h2_enable_connect_protocol => { todo => 1, default => 1 },
    h2_max_header_list_size    => { todo => 1, default => 65536 },
    h2_rst_rate_limit          => { todo => 1 },
);

# Only extensions this server implements may be advertised.
sub _extensions {
    my ($ext) = @_;
    return 'must be a hash reference' unless ref $ext eq 'HASH';
    for my $name (sort keys %$ext) {
        return "names an extension this server does not provide ('$name'; available: fullflush)"
            unless $name eq 'fullflush';
        return "value for '$name' must be a hash reference" unless ref $ext->{$name} eq 'HASH';
    }
    return undef;
}

sub _port { $_[0] =~ /\A\d+\z/ && $_[0] <= 65535 ? undef : 'must be a port number from 0 to 65535' }
sub _positive { $_[0] =~ /\A\d+\z/ && $_[0] > 0 ? undef : 'must be a positive integer' }
sub _non_negative { $_[0] =~ /\A\d+\z/ ? undef : 'must be a non-negative integer' }
sub _seconds { $_[0] =~ /\A(?:\d+(?:\.\d*)?|\.\d+)\z/ ? undef : 'must be a non-negative number of seconds' }

=head1 NAME

PAGI::Server::Config - the option registry of PAGI::Server

=head1 SYNOPSIS

    my $config = PAGI::Server::Config->new(app => $app, port => 0);
    my $port   = $config->{port};
    my %engine = $config->engine_options;

=head1 DESCRIPTION

One table of every option PAGI::Server knows (PAGI-SPEC section 7.1), with
its default. C<new> fills in defaults, checks values, croaks naming an
unknown option, and croaks C<not supported yet> for a known option whose
feature is not built, unless it is given its default value.

=head1 METHODS

=head2 new

    my $config = PAGI::Server::Config->new(%options);

Returns a hash-based object holding every option.

=cut

sub new {
    my ($class, %args) = @_;
    my %config;
    for my $name (sort keys %args) {
        my $spec = $OPTIONS{$name}
            or Carp::croak("PAGI::Server: unknown option '$name'");
        my $value = $args{$name};
        if ($spec->{todo}) {
            next if _same($value, $spec->{default});
            Carp::croak("PAGI::Server: option '$name' is not supported yet");
        }
        if (defined $value && $spec->{check}) {
            my $problem = $spec->{check}->($value);
            Carp::croak("PAGI::Server: option '$name' $problem (got '$value')") if defined $problem;
        }
        $config{$name} = $value;
    }
    for my $name (keys %OPTIONS) {
        my $spec = $OPTIONS{$name};
        Carp::croak("PAGI::Server: option '$name' is required") if $spec->{required} && !defined $config{$name};
        next if exists $config{$name};
        $config{$name} = ref $spec->{default} eq 'CODE' ? $spec->{default}->() : $spec->{default};
    }
    Carp::croak("PAGI::Server: option 'app' must be a code reference")
        unless ref $config{app} && (ref $config{app} eq 'CODE' || overload::Method($config{app}, '&{}'));
    Carp::croak("PAGI::Server: write_low_watermark must not exceed write_high_watermark")
        if $config{write_low_watermark} > $config{write_high_watermark};
    $config{_explicit} = { map { $_ => 1 } keys %args };
    return bless \%config, $class;
}

sub _same {
    my ($a, $b) = @_;
    return !defined $b if !defined $a;
    return 0 if !defined $b || ref $a || ref $b;
    return $a eq $b;
}

=head2 engine_options

Returns the (name, value) pairs handed to L<PAGI::Server::Native/new>.

=cut

sub engine_options {
    my ($self) = @_;
    return map { ($_ => $self->{$_}) } grep { $OPTIONS{$_}{engine} } sort keys %OPTIONS;
}

=head2 is_explicit

    $config->is_explicit('access_log');

True when the option was passed to C<new> rather than defaulted.

=cut

sub is_explicit { $_[0]{_explicit}{ $_[1] } }

=head2 names

The names of every known option, sorted.

=cut

sub names { sort keys %OPTIONS }

=head2 default

    PAGI::Server::Config->default('timeout');   # 60

=cut

sub default { $OPTIONS{ $_[1] } ? $OPTIONS{ $_[1] }{default} : undef }

require overload;

1;
